"""helpers.settings: the cache folder, the quick setting, and holding back TensorFlow's native chatter."""
import os
import subprocess
import sys

from helpers import settings


def test_cache_dir_follows_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(settings.CACHE_ENV, str(tmp_path / "course-cache"))
    folder = settings.cache_dir("bottlenecks", "x")
    assert folder == tmp_path / "course-cache" / "bottlenecks" / "x"
    assert folder.is_dir()


def test_quick_mode_reads_the_usual_spellings(monkeypatch):
    for value, expected in [("1", True), ("yes", True), ("TRUE", True), ("0", False), ("", False), ("no", False)]:
        monkeypatch.setenv(settings.QUICK_ENV, value)
        assert settings.quick_mode() is expected


def test_quiet_native_logs_drops_known_noise_and_passes_other_lines_on(capfd):
    with settings.quiet_native_logs():
        os.write(2, b"I0000 00:00:1.0 1 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
                    b"GPU will not be used.\n")
        os.write(2, b"E0000 00:00:1.0 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n")
        os.write(2, b"W0000 something a learner should see\n")
        os.write(1, b"stdout is untouched\n")
    out, err = capfd.readouterr()
    assert err == "W0000 something a learner should see\n"
    assert out == "stdout is untouched\n"


def test_quiet_native_logs_restores_stderr_when_the_block_raises(capfd):
    try:
        with settings.quiet_native_logs():
            os.write(2, b"the reason it failed\n")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    os.write(2, b"after the block\n")
    assert capfd.readouterr().err == "the reason it failed\nafter the block\n"


def test_importing_helpers_shows_none_of_tensorflows_start_up_lines():
    """A fresh interpreter: `import helpers` imports TensorFlow and probes the devices, silently."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    run = subprocess.run([sys.executable, "-c", "import helpers, tensorflow as tf; tf.constant(1.0) + 1"],
                         capture_output=True, text=True, env=env, cwd=settings.PROJECT_ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "cuInit" not in run.stderr and "cudart_stub" not in run.stderr and "oneDNN" not in run.stderr, run.stderr
