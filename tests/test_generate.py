"""Generation: same job, same bytes, in any process; models and LoRAs load once."""

from __future__ import annotations

import hashlib
import subprocess
import sys


SCRIPT = """
import hashlib, sys
from pathlib import Path
from ldm_batch.generate import ImageGenerator
from ldm_batch.plan import group_batches, plan_row
from ldm_batch.policies import load_policies
from ldm_batch.sheets import PromptRow

policies = load_policies(Path(sys.argv[1]))
row = PromptRow(row=1, asset_id="a-1", prompt="a red circle on a white background", brand="acme",
                variants=2, seed=1234)
batch = group_batches(plan_row(row, "c", policies), 4)[0]
for image in ImageGenerator(policies, "cpu").generate(batch):
    print(hashlib.sha256(image.image.tobytes()).hexdigest())
"""


def generate_in_new_process() -> list[str]:
    from conftest import REPO

    result = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO / "policies")],
                            capture_output=True, text=True, timeout=300, check=True)
    return result.stdout.split()


def test_same_seed_and_settings_give_byte_identical_images_across_processes():
    first, second = generate_in_new_process(), generate_in_new_process()
    assert len(first) == 2 and first[0] != first[1]  # two variants, two different images
    assert first == second


def test_pipeline_and_loras_load_once_and_brands_switch_adapters(policies):
    from ldm_batch.generate import ImageGenerator
    from ldm_batch.plan import group_batches, plan_row
    from ldm_batch.sheets import PromptRow

    generator = ImageGenerator(policies, "cpu")
    rows = [PromptRow(row=i, asset_id=f"a-{i}", prompt="a blue square", brand=brand, seed=5)
            for i, brand in enumerate(["acme", "globex", None, "acme", "globex"], start=1)]
    digests = {}
    for row in rows:
        (image,) = generator.generate(group_batches(plan_row(row, "c", policies), 4)[0])
        digests.setdefault(row.brand, set()).add(hashlib.sha256(image.image.tobytes()).hexdigest())
    assert generator.loads == {"model:demo-tiny-sd": 1, "lora:acme-style": 1, "lora:globex-style": 1}
    # each brand gives the same image every time it comes back, and the brands differ
    assert all(len(d) == 1 for d in digests.values())
    assert len({next(iter(d)) for d in digests.values()}) == 3


def test_torch_work_runs_on_one_thread_whichever_thread_asks(policies):
    """The flow's two batch threads both generate and screen; torch must see one thread
    (a second one slows every pipeline call, see ldm_batch/torch_thread.py)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from ldm_batch.generate import ImageGenerator
    from ldm_batch.plan import group_batches, plan_row
    from ldm_batch.safety.image import ImageScreen
    from ldm_batch.sheets import PromptRow

    generator, screen = ImageGenerator(policies, "cpu"), ImageScreen(policies)
    batches = [group_batches(plan_row(PromptRow(row=i, asset_id=f"a-{i}", prompt="a red star", brand=brand, seed=i),
                                      "c", policies), 4)[0]
               for i, brand in enumerate(["acme", "globex", None, "acme"], start=1)]
    generator.generate(batches[0])  # loads the model
    ran_on = set()
    record = lambda *_: ran_on.add(threading.current_thread().name)  # noqa: E731
    generator.pipeline("demo-tiny-sd")[0].unet.register_forward_pre_hook(record)
    screen.model.visual.register_forward_pre_hook(record)

    def generate_and_screen(batch):
        return screen.screen_images([g.image for g in generator.generate(batch)])

    with ThreadPoolExecutor(2) as threads:
        verdicts = list(threads.map(generate_and_screen, batches))
    assert [len(v) for v in verdicts] == [1, 1, 1, 1]
    assert len(ran_on) == 1 and threading.current_thread().name not in ran_on


def _sum_on_torch_thread_and_report(results) -> None:
    from ldm_batch.torch_thread import on_torch_thread

    try:
        results.put(on_torch_thread(sum, [1, 2, 3]))
    except BaseException as exc:  # the child's traceback would be lost to pytest's capture
        results.put(f"{type(exc).__name__}: {exc}")


def test_a_forked_child_runs_torch_work_on_its_own_torch_thread():
    """A child forked after the torch thread started (multiprocessing's fork start method)
    inherits none of its threads; its torch work must still run, not wait forever.
    (Its exit code is not ours to check: after a flow ran in the parent, Prefect's at-exit
    service drain fails in a forked child.)"""
    import multiprocessing

    from ldm_batch.torch_thread import on_torch_thread

    on_torch_thread(int)  # the parent's torch thread is running
    fork = multiprocessing.get_context("fork")
    results = fork.Queue()
    child = fork.Process(target=_sum_on_torch_thread_and_report, args=(results,))
    child.start()
    child.join(timeout=30)
    if child.is_alive():
        child.kill()
    assert results.get(timeout=5) == 6


def test_a_changed_config_or_tokenizer_changes_the_pin(tmp_path):
    import shutil

    import pytest

    from ldm_batch.catalog import resolve, verified_path, weights_sha256
    from ldm_batch.problems import CatalogError

    folder = tmp_path / "demo-tiny-sd"
    shutil.copytree(resolve("builtin:demo-tiny-sd", None), folder)
    pin = weights_sha256(folder)
    for edited in ("unet/config.json", "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json"):
        original = (folder / edited).read_text()
        (folder / edited).write_text(original.replace("}", ', "edited": true}', 1))
        with pytest.raises(CatalogError, match="does not match the catalog"):
            verified_path(str(folder), None, pin)
        (folder / edited).write_text(original)
    assert verified_path(str(folder), None, pin)[1] == pin
