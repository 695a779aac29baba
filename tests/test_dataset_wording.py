"""What the scan tells the user: a class folder inside the dataset, hard crops of wide images."""

from __future__ import annotations

from pathlib import Path

from core.dataset.scan import scan_dataset
from tests.conftest import write_image


def test_a_class_folder_inside_the_dataset_is_recognised_not_renamed(kohya_dataset) -> None:
    data = kohya_dataset()
    write_image(data / "reg" / "1_dog" / "dog0.png")
    scan = scan_dataset(data)
    reg = str(data / "reg")
    assert scan.class_folders == (reg,)
    (problem,) = [p for p in scan.problems if p.path == reg]
    assert "class (regularisation) folder" in problem.message and f"--reg '{reg}'" in problem.fix
    assert "10_reg" not in problem.fix
    assert [s.name for s in scan.subsets] == ["10_sks dog"]
    given = scan_dataset(data, data / "reg")
    assert given.class_folders == () and not [p for p in given.problems if p.path == reg]
    assert given.reg_images == 1


def test_a_very_wide_image_cropped_hard_is_named_with_how_much_is_cut(tmp_path: Path) -> None:
    write_image(tmp_path / "data" / "10_pano" / "pano.png", size=(4000, 200))
    write_image(tmp_path / "data" / "10_pano" / "square.png", size=(80, 64))
    scan = scan_dataset(tmp_path / "data", resolution=64)
    (problem,) = [p for p in scan.problems if "cropped hard" in p.message]
    assert "pano.png, 4000x200 in 64x64, 95% of its width cut" in problem.message
    assert "square.png" not in problem.message
