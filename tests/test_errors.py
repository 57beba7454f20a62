"""The one line an error becomes, also when a DataLoader worker raised it."""
import pytest
import torch

from kit.errors import KitError, describe


class Unreadable(torch.utils.data.Dataset):
    def __init__(self, error):
        self.error = error

    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise self.error


@pytest.mark.parametrize("error, line", [
    (KitError("image 7.jpg cannot be decoded: rerun --stage separate"), "image 7.jpg cannot be decoded: rerun "
                                                                        "--stage separate"),
    (ValueError("bad pixel: 3"), "ValueError in a data-loading worker: bad pixel: 3"),
])
def test_an_error_in_a_dataloader_worker_is_its_own_one_line(error, line):
    loader = torch.utils.data.DataLoader(Unreadable(error), num_workers=1)
    with pytest.raises(type(error)) as raised:
        next(iter(loader))
    assert "Original Traceback" in str(raised.value)  # as torch re-raises it
    assert describe(raised.value) == line


def test_errors_outside_workers_keep_their_lines():
    assert describe(KitError("problem; fix")) == "problem; fix"
    assert describe(RuntimeError("first\nsecond")) == "RuntimeError: first"
    assert describe(PermissionError(13, "Permission denied", "/x")).startswith("Permission denied: /x; check")
