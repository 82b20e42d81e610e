"""runtime/records.py: a typed record read back from the JSON dataclasses.asdict wrote, or refused naming the field."""

import dataclasses
import json
from typing import Literal

import pytest
from rvc_index.runtime.records import RecordError, from_json


@dataclasses.dataclass(frozen=True)
class Leaf:
    name: str
    share: float


@dataclasses.dataclass(frozen=True)
class Other:
    reason: str


@dataclasses.dataclass(frozen=True)
class Tree:
    kind: Literal["a", "b"]
    leaves: tuple[Leaf, ...]
    pairs: tuple[tuple[str, int], ...]
    child: Leaf | Other | None
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    note: str | None = None


def round_trip(record):
    return from_json(type(record), json.loads(json.dumps(dataclasses.asdict(record))))


def test_nested_records_tuples_unions_and_whole_floats_read_back_as_written():
    tree = Tree("a", (Leaf("x", 1.0), Leaf("y", 0.5)), (("f", 1),), Other("none"), {"n": 3})
    assert round_trip(tree) == tree and isinstance(round_trip(tree).leaves, tuple)
    assert round_trip(dataclasses.replace(tree, child=Leaf("z", 2.0))).child == Leaf("z", 2.0)
    assert round_trip(dataclasses.replace(tree, child=None)).child is None
    data = json.loads(json.dumps(dataclasses.asdict(tree)))
    data["leaves"][0]["share"] = 1  # JSON writes 1.0 as 1 in other writers: still a float
    assert from_json(Tree, {**data, "added_by_a_newer_writer": True}).leaves[0].share == 1.0


@pytest.mark.parametrize("change, where", [
    (lambda d: d.pop("kind"), "Tree.kind: missing"),
    (lambda d: d.update(kind="c"), "Tree.kind: 'c' is not one of"),
    (lambda d: d["leaves"][1].update(share="half"), "Tree.leaves[1].share: expected float"),
    (lambda d: d.update(pairs=[["f", 1, 2]]), "Tree.pairs[0]: expected 2 items"),
    (lambda d: d.update(counts={"n": True}), "Tree.counts.n: expected a whole number"),
    (lambda d: d.update(child={"nothing": 1}), "Tree.child: {'nothing': 1} is none of Leaf, Other, NoneType"),
])
def test_json_of_another_shape_is_refused_naming_the_field(change, where):
    data = json.loads(json.dumps(dataclasses.asdict(Tree("b", (Leaf("x", 1.0), Leaf("y", 2.0)), (), None))))
    change(data)
    with pytest.raises(RecordError) as info:
        from_json(Tree, data)
    assert str(info.value).startswith(where)
