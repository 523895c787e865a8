"""Where Assisted Excitation goes: layer indices, ``{"stride": S}`` and ``assisted_excitation=N``.

Works on a parsed cfg alone (no torch), so the API checks a job's placement with the same rule
the Trainer applies. The rule is documented in docs/assisted_excitation.md, "Placement".
"""

from collections import Counter
from collections.abc import Mapping, Sequence

from ae_model.cfg import DarknetConfig, RouteSection, Section, ShortcutSection

LayerSpec = int | Sequence[int] | Mapping[str, int]
"""An AE placement: a darknet layer index, several, or ``{"stride": S}``."""

# Section types whose layers are detection heads, not features to excite.
HEAD_TYPES = ("yolo", "region")


def cfg_excitation_layers(cfg: DarknetConfig) -> dict[int, int]:
    """``{layer index: N}`` for each section of ``cfg`` with ``assisted_excitation=N``, N > 0."""
    found = {index: cfg_excitation(section) for index, section in enumerate(cfg.sections)}
    return {index: n for index, n in found.items() if n > 0}


def cfg_excitation(section: Section) -> int:
    """The section's ``assisted_excitation=N`` (absent: 0, off)."""
    value = section.options.get("assisted_excitation")
    if value is None:
        return 0
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise section.error(
            f"assisted_excitation={value} must be an integer >= 0 (0: off, 1: decay over "
            "max_batches/2, N > 1: on from burn_in to iteration N)"
        )
    return n


def resolve_layers(cfg: DarknetConfig, spec: LayerSpec, width: int, height: int) -> list[int]:
    """Darknet layer indices for a placement ``spec``.

    Args:
        cfg: the network's parsed cfg.
        spec: an index, a sequence of indices, or ``{"stride": S}`` (see :func:`resolve_stride`).
        width: network input width used to compute strides.
        height: network input height used to compute strides.

    Returns:
        Sorted, distinct layer indices.

    Raises:
        ValueError: an index outside the network or naming a detection head, or a bad spec.
    """
    if isinstance(spec, Mapping):
        stride = spec.get("stride")
        if set(spec) != {"stride"} or isinstance(stride, bool) or not isinstance(stride, int):
            raise ValueError(
                f'AE placement by stride is {{"stride": S}} with S an integer such as 8 or 16, '
                f"got {dict(spec)}"
            )
        return [resolve_stride(cfg, stride, width, height)]
    indices = [spec] if isinstance(spec, int) else list(spec)
    if not indices:
        raise ValueError("AE placement names no layer; give layer indices or {'stride': S}")
    count = len(cfg.sections)
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise ValueError(
                f"AE layer index {index!r} is not a layer of this network: valid indices are "
                f"0..{count - 1} (see the layer table)"
            )
        kind = cfg.sections[index].type
        if kind in HEAD_TYPES:
            raise ValueError(
                f"layer {index} is a [{kind}] detection head; AE excites features: choose a "
                "layer before it"
            )
    return sorted(set(indices))


def resolve_stride(cfg: DarknetConfig, stride: int, width: int, height: int) -> int:
    """The one layer where AE goes for ``{"stride": S}`` at a ``width x height`` input.

    1. If a ``[route]`` concatenates the output of an ``[upsample]`` whose output stride is
       ``S``: the first such route (the paper's "branch after upsampling": yolov3 stride 16 is
       layer 86 and stride 8 is layer 98, yolov3-tiny stride 16 is layer 20).
    2. Otherwise, among the layers of stride ``S`` from the first one up to the first layer of
       a larger stride, the last one (the end of the backbone's stride-``S`` stage).
    3. When no layer has a larger stride, that stage runs into the first head; the last of its
       layers whose output feeds two or more later layers is taken (where the first detection
       branch forks off; yolov3-tiny stride 32 is layer 13), or, if none does, its last layer.

    Rules 2 and 3 skip the heads and the prediction layers that feed them.

    Raises:
        ValueError: no layer has output stride ``S``; the message lists the strides there are.
    """
    rows = cfg.layer_table(width, height)
    types = [section.type for section in cfg.sections]
    strides = [row.out_stride for row in rows]
    inputs = [_inputs(cfg, j) for j in range(len(types))]
    for up in (i for i, kind in enumerate(types) if kind == "upsample" and strides[i] == stride):
        for j in range(up + 1, len(types)):
            if types[j] == "route" and up in inputs[j]:
                return j
    # Heads and the prediction layers feeding them hold outputs, not features to excite.
    heads = [i for i, kind in enumerate(types) if kind in HEAD_TYPES]
    excluded = set(heads).union(*(inputs[i] for i in heads))
    features = [i for i, s in enumerate(strides) if s == stride and i not in excluded]
    if not features:
        present = sorted({s for i, s in enumerate(strides) if i not in excluded})
        raise ValueError(
            f"no layer has output stride {stride} at {width}x{height}; this network has strides "
            f"{', '.join(f'{s:g}' for s in present)} (see the layer table)"
        )
    first = features[0]
    end = next((i for i in range(first, len(strides)) if strides[i] > stride), None)
    if end is not None:
        return max(i for i in features if i < end)
    head = next((i for i in heads if i > first), len(types))
    stage = [i for i in features if i < head]
    readers = Counter(i for reads in inputs for i in reads)
    forks = [i for i in stage if readers[i] > 1]
    return (forks or stage)[-1]


def _inputs(cfg: DarknetConfig, index: int) -> set[int]:
    """Indices of the layers whose outputs layer ``index`` reads."""
    section = cfg.sections[index]
    if isinstance(section, RouteSection):
        return set(section.layers)
    if isinstance(section, ShortcutSection):
        return {index - 1, section.from_layer}
    return {index - 1}
