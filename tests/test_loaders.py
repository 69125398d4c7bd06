"""Training loaders resume mid-epoch: a run stopped and resumed sees the same photos in the same
order as one never stopped (the campaign stops and resumes its runs every session)."""

import lightning as L
import pytest
import torch
from torch.utils.data import Dataset

from carmask.training.data.loaders import training_loader


class Numbers(Dataset):
    def __len__(self) -> int:
        return 20

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([float(index)])


class Recorder(L.LightningModule):
    """Records which items each training step saw."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[tuple[int, list[int]]] = []

    def training_step(self, batch: torch.Tensor, index: int) -> torch.Tensor:
        self.seen.append((self.current_epoch, [int(x) for x in batch[:, 0]]))
        return self.layer(batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(folder, workers: int, max_steps: int = -1, resume=None) -> list[tuple[int, list[int]]]:
    torch.manual_seed(0)
    loader = training_loader(Numbers(), 2, num_workers=workers)
    every_3_steps = L.pytorch.callbacks.ModelCheckpoint(dirpath=folder, filename="latest",
                                                        every_n_train_steps=3)
    trainer = L.Trainer(max_epochs=2, max_steps=max_steps, callbacks=[every_3_steps], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    model = Recorder()
    trainer.fit(model, loader, ckpt_path=resume)
    return model.seen


@pytest.mark.parametrize("workers", [0, 1])
def test_a_resumed_run_goes_on_with_the_rest_of_its_epoch(tmp_path, workers):
    whole = fit(tmp_path / "whole", workers)
    assert len(whole) == 20 and sorted(sum((b for e, b in whole if e == 0), [])) == list(range(20))
    stopped = fit(tmp_path / "stopped", workers, max_steps=7)  # killed after step 7, saved at 6
    resumed = fit(tmp_path / "stopped", workers, resume=tmp_path / "stopped" / "latest.ckpt")
    assert stopped[:6] + resumed == whole  # step 7 is done again, then the epoch goes on
    # a plain DataLoader would start the epoch's order again: its first batch, not the seventh
    assert resumed[0] == whole[6] != whole[0]


def test_training_checkpoints_hold_the_loaders_place(synth_run):
    out, _ = synth_run
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    states = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert len(states) == 1 and states[0]["_num_yielded"] > 0


def test_without_torchdata_training_goes_on_and_says_what_resuming_loses(monkeypatch, caplog):
    from carmask.training.data import loaders
    monkeypatch.setattr(loaders, "StatefulDataLoader", None)
    loader = training_loader(Numbers(), 4)
    assert type(loader) is torch.utils.data.DataLoader and len(loader) == 5
    assert sorted(int(x) for batch in loader for x in batch[:, 0]) == list(range(20))
    assert "torchdata is not installed" in caplog.text
