"""``python -m ae_model``: the model library's command line (``ae_model.cli``)."""

from ae_model.cli import app

if __name__ == "__main__":
    app(prog_name="python -m ae_model")
