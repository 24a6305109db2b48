"""diffsolve.images: the 8-bit map (docs/math.md (26.1)) against EDM's formula, PNG round trips, and
one reader for every kind of dataset, with clear errors."""
import numpy as np
import pytest
import torch

from diffsolve.distributed import DistContext
from diffsolve.images import (Dataset, as_dataset, from_uint8, load_image, open_dataset, save_png, to_uint8)


def test_the_8bit_map_is_edms_and_from_uint8_inverts_it():
    x = torch.linspace(-1.2, 1.2, 10001, dtype=torch.float64)
    edm = (x * 127.5 + 128).clip(0, 255).to(torch.uint8)  # EDM generate.py's formula (floor by the cast)
    assert torch.equal(to_uint8(x), edm)
    k = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(from_uint8(k)), k)
    assert torch.equal(to_uint8(from_uint8(k, (0.0, 1.0)), (0.0, 1.0)), k)
    inside = x.abs() <= 1
    assert float((from_uint8(to_uint8(x)) - x)[inside].abs().max()) <= 1 / 255 + 1e-12  # half a level: 2/510
    with pytest.raises(ValueError, match="lo < hi"):
        to_uint8(x, (1.0, 1.0))


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip(tmp_path, channels):
    im = torch.randint(0, 256, (channels, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    save_png(tmp_path / "a.png", im)
    assert torch.equal(load_image(tmp_path / "a.png"), im)
    with pytest.raises(ValueError, match="uint8 image"):
        save_png(tmp_path / "b.png", im.float())


def test_every_kind_of_dataset_reads_the_same_images(tmp_path):
    u8 = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    for i, im in enumerate(u8):  # recursive, sorted by path
        save_png(tmp_path / "folder" / ("sub" if i >= 3 else "") / f"{i}.png", im)
    np.savez(tmp_path / "adm.npz", arr_0=u8.permute(0, 2, 3, 1).numpy())  # ADM: NHWC under arr_0
    np.save(tmp_path / "a.npy", u8.numpy())
    torch.save(u8, tmp_path / "a.pt")
    for src in ("folder", "adm.npz", "a.npy", "a.pt"):
        ds = open_dataset(tmp_path / src)
        assert len(ds) == 6 and ds.shape == (3, 4, 4) and ds.is_image, src
        assert torch.equal(torch.cat([b for _, b in ds.batches(4)]), u8), src
    x = torch.randn(5, 2, dtype=torch.float64)
    ds = as_dataset(x, "samples")
    assert isinstance(ds, Dataset) and not ds.is_image and torch.equal(ds[1:3], x[1:3])


def test_npz_shards_read_back_in_seed_order(tmp_path):
    x = torch.randn(7, 2)
    np.savez(tmp_path / "samples-000004-000006.npz", seeds=np.array([4, 5, 6]), x=x[4:].numpy())
    np.savez(tmp_path / "samples-000000-000003.npz", seeds=np.array([0, 1, 2, 3]), x=x[:4].numpy())
    ds = open_dataset(tmp_path)
    assert ds.seeds == list(range(7)) and torch.equal(ds[0:7], x)


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "no such file or folder"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "holds no images"),
    (lambda p: np.savez(p / "s.npz", mu=np.zeros(2), sigma=np.eye(2)) or p / "s.npz", "feature statistics"),
    (lambda p: np.savez(p / "m.npz", a=np.zeros((2, 2)), b=np.zeros((2, 2))) or p / "m.npz", "more than one key"),
    (lambda p: np.save(p / "i.npy", np.zeros((3, 2), np.int64)) or p / "i.npy", "uint8 images or floating"),
    (lambda p: (p / "x.txt").write_text("x") and p / "x.txt", "a dataset is a folder"),
    (lambda p: 3, "a dataset is a path"),
])
def test_bad_datasets_are_one_clear_error(tmp_path, make, message):
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=message):
        open_dataset(make(tmp_path))


def test_blocks_do_not_depend_on_the_number_of_processes():
    n, b = 23, 4
    one = DistContext().blocks(n, b)
    for w in (2, 3, 5):
        parts = [DistContext(world_size=w, rank=r).blocks(n, b) for r in range(w)]
        assert sorted(sum(parts, [])) == one  # the same blocks, each exactly once
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # dealt in turn


def test_a_png_folder_reads_in_seed_order_across_a_million():
    """Folder names 999000/ and 1000000/ sort as numbers: seed 1000000's image comes after seed 999999's."""
    from pathlib import Path

    from diffsolve.images import natural_order

    paths = [Path("d/1000000/1000000.png"), Path("d/999000/999999.png"), Path("d/999000/999998.png")]
    assert [p.name for p in sorted(paths, key=natural_order)] == ["999998.png", "999999.png", "1000000.png"]


def test_every_image_header_is_read_before_any_work(tmp_path):
    """A folder's images were read a batch at a time, so a late image of another size, or a corrupt one, stopped
    a likelihood run after rows were written; a 16-bit PNG was converted to RGB, which saturates it (1000 became
    255), and scored. Each is now refused when the folder is opened, from the headers alone."""
    import numpy as np
    from PIL import Image

    from diffsolve.images import open_dataset

    def folder(name, last):
        d = tmp_path / name
        d.mkdir()
        for i in range(3):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / f"{i}.png")
        last(d / "3.png")
        return d

    cases = [(lambda p: Image.fromarray(np.zeros((9, 9), np.uint8)).save(p), r"3\.png has shape \(1, 9, 9\)"),
             (lambda p: p.write_bytes(b"not a png"), r"cannot read .*3\.png as an image"),
             (lambda p: Image.fromarray(np.full((8, 8), 1000, np.uint16)).save(p), r"more than 8 bits per channel")]
    for i, (last, match) in enumerate(cases):
        with pytest.raises(ValueError, match=match):
            open_dataset(folder(f"d{i}", last))
    assert len(open_dataset(folder("ok", lambda p: Image.fromarray(np.zeros((8, 8), np.uint8)).save(p)))) == 4
