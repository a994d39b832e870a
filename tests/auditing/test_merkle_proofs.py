"""RFC 9162 Merkle proofs in the offline verifier (audit/verify_audit.py), checked against a small
implementation written here straight from the RFC's text (§2.1.1 MTH, §2.1.3.1 PATH, §2.1.4.1
PROOF/SUBPROOF, by naive recursion over lists of leaves) for every tree size 1…64 and every index,
and every consistency pair 1 ≤ m ≤ n ≤ 64. Pure functions: no database."""

from __future__ import annotations

import hashlib
import random
from functools import cache

import pytest

from audit.verify_audit import (
    EMPTY_ROOT,
    CompactRange,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    new_nodes,
    node_hash,
    subtree_hash,
    tree_root,
    verify_consistency,
    verify_inclusion,
)

MAX = 64
LEAVES = tuple(f'{{"seq":{i + 1},"action":"approval.decided"}}'.encode() for i in range(MAX))


# --- the reference: RFC 9162 §2.1 read literally -------------------------------------------------

def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def ref_mth(leaves: tuple[bytes, ...]) -> bytes:
    n = len(leaves)
    if n == 0:
        return _sha(b"")
    if n == 1:
        return _sha(b"\x00" + leaves[0])
    k = _k(n)
    return _sha(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:]))


def ref_path(m: int, leaves: tuple[bytes, ...]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return ref_path(m, leaves[:k]) + [ref_mth(leaves[k:])]
    return ref_path(m - k, leaves[k:]) + [ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: tuple[bytes, ...], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [ref_mth(leaves)]
    k = _k(n)
    if m <= k:
        return ref_subproof(m, leaves[:k], b) + [ref_mth(leaves[k:])]
    return ref_subproof(m - k, leaves[k:], False) + [ref_mth(leaves[:k])]


def ref_proof(m: int, leaves: tuple[bytes, ...]) -> list[bytes]:
    return ref_subproof(m, leaves, True)


def ref_node(level: int, index: int) -> bytes:
    """The stored node as the server would hold it, computed by the reference from the leaves."""
    start, end = index << level, (index + 1) << level
    assert 0 <= start and end <= MAX, f"asked for a node ({level}, {index}) outside the leaves"
    return ref_mth(LEAVES[start:end])


def nodes_of(size: int):
    """A lookup that refuses any node not complete in a tree of `size` leaves (a proof must never need one)."""
    def node(level: int, index: int) -> bytes:
        assert level >= 0 and (index + 1) << level <= size, f"node ({level}, {index}) is not in a tree of {size}"
        return ref_node(level, index)
    return node


def flipped(digest: bytes, at: int = 0) -> bytes:
    return digest[:at] + bytes([digest[at] ^ 1]) + digest[at + 1:]


# --- hashing --------------------------------------------------------------------------------------

def test_leaf_and_node_hashes_are_domain_separated_sha256():
    assert leaf_hash(b"abc") == _sha(b"\x00abc")
    assert node_hash(b"L" * 32, b"R" * 32) == _sha(b"\x01" + b"L" * 32 + b"R" * 32)
    assert EMPTY_ROOT == _sha(b"") == tree_root(0, nodes_of(0))
    # a leaf holding two hashes never passes for the inner node over them
    assert leaf_hash(b"L" * 32 + b"R" * 32) != node_hash(b"L" * 32, b"R" * 32)


@pytest.mark.parametrize("size", range(1, MAX + 1))
def test_roots_match_the_rfc_for_every_size(size):
    tree = MerkleTree.of_leaves(LEAVES[:size])
    assert tree_root(size, nodes_of(size)) == ref_mth(LEAVES[:size]) == tree.root()


def test_subtree_hash_of_any_range_is_the_mth_of_those_leaves():
    for start in range(0, 40):
        for end in range(start, 41):
            assert subtree_hash(start, end, ref_node) == ref_mth(LEAVES[start:end]), (start, end)


# --- inclusion ------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", range(1, MAX + 1))
def test_inclusion_proofs_for_every_index_equal_the_rfcs_and_verify(size):
    root = ref_mth(LEAVES[:size])
    for index in range(size):
        proof = inclusion_proof(index, size, nodes_of(size))
        assert proof == ref_path(index, LEAVES[:size]), (index, size)
        assert verify_inclusion(leaf_hash(LEAVES[index]), index, size, proof, root)


@pytest.mark.parametrize("size", range(1, MAX + 1))
def test_tampered_inclusion_proofs_leaves_and_roots_are_refused(size):
    root = ref_mth(LEAVES[:size])
    for index in range(size):
        leaf, proof = leaf_hash(LEAVES[index]), ref_path(index, LEAVES[:size])
        assert not verify_inclusion(leaf_hash(LEAVES[index] + b" "), index, size, proof, root)  # altered leaf
        assert not verify_inclusion(flipped(leaf, 31), index, size, proof, root)
        assert not verify_inclusion(leaf, index, size, proof, flipped(root))  # another root
        for at in range(len(proof)):  # any hash of the path altered
            assert not verify_inclusion(leaf, index, size, [*proof[:at], flipped(proof[at], at), *proof[at + 1:]],
                                        root)
        assert not verify_inclusion(leaf, index, size, [*proof, root], root)  # one hash too many
        if proof:
            assert not verify_inclusion(leaf, index, size, proof[:-1], root)  # one too few
        for other in {index - 1, index + 1, size} - {-1}:  # the same leaf claimed at another place
            assert not verify_inclusion(leaf, other, size, proof, root)
        assert not verify_inclusion(leaf, index, size, [p[:31] for p in proof], root) or not proof


def test_a_leaf_index_outside_the_tree_has_no_proof():
    with pytest.raises(ValueError):
        inclusion_proof(5, 5, nodes_of(5))
    with pytest.raises(ValueError):
        inclusion_proof(-1, 5, nodes_of(5))
    assert not verify_inclusion(leaf_hash(LEAVES[0]), 0, 0, [], EMPTY_ROOT)


def test_proofs_read_few_stored_nodes_even_in_a_large_tree():
    """A server holding 300,000 leaves answers a proof with O(log² n) node lookups."""
    size, asked = 300_007, []

    @cache
    def stored(level: int, index: int) -> bytes:
        if level == 0:
            return leaf_hash(b"%d" % index)
        return node_hash(stored(level - 1, 2 * index), stored(level - 1, 2 * index + 1))

    def node(level: int, index: int) -> bytes:
        assert (index + 1) << level <= size
        asked.append((level, index))
        return stored(level, index)

    bits = (size - 1).bit_length()
    for index in (0, 1, 131_071, 131_072, 262_144, size - 1):
        asked.clear()
        proof = inclusion_proof(index, size, node)
        assert len(proof) <= bits and len(asked) <= bits * bits, (index, len(asked))
        assert verify_inclusion(node(0, index), index, size, proof, tree_root(size, node))
    for first in (1, 2, 3, 1000, 262_144, 277_777, size - 1):
        asked.clear()
        proof = consistency_proof(first, size, node)
        assert len(asked) <= bits * bits, (first, len(asked))
        assert verify_consistency(first, size, tree_root(first, node), tree_root(size, node), proof)


# --- consistency ----------------------------------------------------------------------------------

def test_consistency_proofs_for_every_pair_equal_the_rfcs_and_verify():
    for n in range(1, MAX + 1):
        second_root = ref_mth(LEAVES[:n])
        for m in range(1, n + 1):
            proof = consistency_proof(m, n, nodes_of(n))
            assert proof == (ref_proof(m, LEAVES[:n]) if m < n else []), (m, n)
            assert verify_consistency(m, n, ref_mth(LEAVES[:m]), second_root, proof), (m, n)


def test_tampered_consistency_proofs_and_roots_are_refused():
    for n in range(1, MAX + 1):
        second_root = ref_mth(LEAVES[:n])
        for m in range(1, n + 1):
            first_root, proof = ref_mth(LEAVES[:m]), consistency_proof(m, n, nodes_of(n))
            assert not verify_consistency(m, n, flipped(first_root), second_root, proof), (m, n)
            assert not verify_consistency(m, n, first_root, flipped(second_root), proof), (m, n)
            for at in range(len(proof)):
                bad = [*proof[:at], flipped(proof[at], at), *proof[at + 1:]]
                assert not verify_consistency(m, n, first_root, second_root, bad), (m, n, at)
            assert not verify_consistency(m, n, first_root, second_root, [*proof, second_root]), (m, n)
            if proof:
                assert not verify_consistency(m, n, first_root, second_root, proof[:-1]), (m, n)
            if m < n:  # the proof is for these sizes only
                assert not verify_consistency(m + 1, n, first_root, second_root, proof), (m, n)
            assert not verify_consistency(n, m, second_root, first_root, proof) or m == n


def test_the_empty_tree_and_equal_sizes():
    root = ref_mth(LEAVES[:7])
    assert consistency_proof(0, 7, nodes_of(7)) == [] and consistency_proof(7, 7, nodes_of(7)) == []
    assert verify_consistency(0, 7, EMPTY_ROOT, root, [])
    assert not verify_consistency(0, 7, root, root, [])
    assert verify_consistency(7, 7, root, root, [])
    assert not verify_consistency(7, 7, root, flipped(root), [])
    assert not verify_consistency(7, 7, root, root, [root])
    with pytest.raises(ValueError):
        consistency_proof(8, 7, nodes_of(7))


def test_a_forked_log_is_not_consistent_with_the_tree_it_forked_from():
    """Two logs that agree on their first leaves but one rewrote leaf j: no consistency proof the
    forked log can give makes its later root extend the honest earlier one."""
    rng = random.Random(17)
    for _ in range(200):
        n = rng.randint(2, MAX)
        m = rng.randint(1, n - 1)
        j = rng.randrange(m)
        forked = list(LEAVES[:n])
        forked[j] = b'{"seq":%d,"action":"approval.decided","rewritten":true}' % (j + 1)
        fork = MerkleTree.of_leaves(forked)
        honest_first = ref_mth(LEAVES[:m])
        assert not verify_consistency(m, n, honest_first, fork.root(), fork.consistency_proof(m, n)), (m, n, j)
        # and an honest proof does not carry the forked root either
        assert not verify_consistency(m, n, honest_first, fork.root(), ref_proof(m, LEAVES[:n])), (m, n, j)
        assert verify_consistency(m, n, fork.root(m), fork.root(), fork.consistency_proof(m, n))


# --- building the tree as leaves arrive -----------------------------------------------------------

def _all_nodes(tree: MerkleTree) -> set[tuple[int, int, bytes]]:
    return {(level, index, digest) for level, row in enumerate(tree.levels) for index, digest in enumerate(row)}


@pytest.mark.parametrize("total", range(1, MAX + 1))
def test_new_nodes_of_every_split_equal_the_tree_built_at_once(total):
    hashes = [leaf_hash(leaf) for leaf in LEAVES[:total]]
    whole = _all_nodes(MerkleTree(hashes))
    for before in range(total + 1):
        old, asked = MerkleTree(hashes[:before]), []

        def node(level: int, index: int, old=old, asked=asked) -> bytes:
            asked.append((level, index))
            return old.node(level, index)

        made = new_nodes(before, hashes[before:], node)
        assert _all_nodes(old) | set(made) == whole and not _all_nodes(old) & set(made), (before, total)
        assert len(made) == len(set(made))
        assert [(0, i, h) for i, h in enumerate(hashes[before:], before)] == [n for n in made if n[0] == 0]
        seen = {(level, index) for level, index, _ in _all_nodes(old)}
        for level, index, _ in made:  # each node comes after both its children
            assert level == 0 or {(level - 1, 2 * index), (level - 1, 2 * index + 1)} <= seen, (level, index)
            seen.add((level, index))
        # only the old tree's right edge is read, each node once
        assert len(asked) == len(set(asked)) <= bin(before).count("1")


def test_new_nodes_in_many_batches_build_the_same_tree():
    rng = random.Random(9162)
    hashes = [leaf_hash(leaf) for leaf in LEAVES]
    for _ in range(50):
        stored: dict[tuple[int, int], bytes] = {}
        size = 0
        while size < MAX:
            batch = hashes[size:size + rng.randint(1, 9)]
            for level, index, digest in new_nodes(size, batch, lambda lv, ix, stored=stored: stored[lv, ix]):
                stored[level, index] = digest
            size += len(batch)
            assert tree_root(size, lambda lv, ix, stored=stored: stored[lv, ix]) == ref_mth(LEAVES[:size])
        assert set(stored.items()) == {((lv, ix), h) for lv, ix, h in _all_nodes(MerkleTree(hashes))}


def test_compact_ranges_give_every_prefix_root_and_join_across_stretches():
    hashes = [leaf_hash(leaf) for leaf in LEAVES]
    whole = CompactRange()
    for size, digest in enumerate(hashes, 1):
        whole.append(digest)
        assert whole.root() == ref_mth(LEAVES[:size])
        assert len(whole.nodes) == bin(size).count("1")
    for cut in range(MAX + 1):
        for cut2 in range(cut, MAX + 1, 7):
            left, middle, right = CompactRange(0), CompactRange(cut), CompactRange(cut2)
            for i, digest in enumerate(hashes):
                (left if i < cut else middle if i < cut2 else right).append(digest)
            left.extend(middle)
            left.extend(right)
            assert left.root() == ref_mth(LEAVES), (cut, cut2)
    with pytest.raises(ValueError):
        CompactRange(3).root()
