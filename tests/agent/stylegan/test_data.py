import numpy as np
import pytest
import torch

from agent.records import FundusImage
from agent.stylegan.data import fundus_to_tensors, tensor_to_uint8
from protocols.errors import BadInputError


@pytest.fixture(scope="module")
def phantom_fundus():
    phantoms = pytest.importorskip("agent.phantoms.in_memory")
    return phantoms.fundus_images(3, seed=0, size=64, repeat=(1,))


def test_phantom_fundus_become_training_tensors(phantom_fundus):
    images, patients = fundus_to_tensors(phantom_fundus, resolution=32)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert patients.tolist() == [0, 1, 1, 2]  # both eyes of patient 1 share one index


def test_same_resolution_round_trips_exactly(phantom_fundus):
    images, _ = fundus_to_tensors(phantom_fundus, resolution=64)
    back = tensor_to_uint8(images)
    assert np.array_equal(back[0], phantom_fundus[0].rgb)


def test_no_images_is_bad_input():
    with pytest.raises(BadInputError, match="no fundus images"):
        fundus_to_tensors([], resolution=64)


def test_a_few_training_steps_on_phantoms(phantom_fundus, tiny_arch, tiny_train):
    import dataclasses

    from agent.stylegan.config import TrainingMode
    from agent.stylegan.train import StyleGANTrainer

    images, patients = fundus_to_tensors(phantom_fundus, resolution=16)
    trainer = StyleGANTrainer(tiny_arch, dataclasses.replace(tiny_train, batch_size=4), mode=TrainingMode.LOCAL, seed=0)
    metrics = trainer.fit(images, patients, steps=2)
    assert np.isfinite(metrics["d_loss"]) and np.isfinite(metrics["g_loss"])
