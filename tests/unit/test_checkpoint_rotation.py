"""--keep-last: which checkpoints a save deletes."""

from megatron_adept.training.checkpointing import iteration_dir, remove_old_checkpoints


def test_keeps_newest_resumed_and_later_checkpoints(tmp_path):
    for iteration in (1, 2, 3, 4, 6):
        iteration_dir(tmp_path, iteration).mkdir()
    (tmp_path / "iter_notes").mkdir()  # not a checkpoint name: never touched
    removed = remove_old_checkpoints(tmp_path, 2, latest=4, protect=iteration_dir(tmp_path, 1))
    assert removed == [iteration_dir(tmp_path, 2)]
    # 1: resumed from; 3, 4: the newest two up to the current iteration; 6: a later leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "iter_0000001",
        "iter_0000003",
        "iter_0000004",
        "iter_0000006",
        "iter_notes",
    ]
