import subprocess
import sys

import pytest

from jaxnas import allocator


def test_find_tcmalloc_searches_the_given_dirs(tmp_path):
    assert allocator.find_tcmalloc([str(tmp_path)]) is None
    (tmp_path / "libtcmalloc.so.4").write_bytes(b"")
    assert allocator.find_tcmalloc([str(tmp_path / "missing"), str(tmp_path)]) == str(tmp_path / "libtcmalloc.so.4")
    (tmp_path / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert allocator.find_tcmalloc([str(tmp_path)]).endswith("libtcmalloc_minimal.so.4")  # minimal preferred


def test_loaded_allocator_reads_the_memory_map(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 00:00 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert allocator.loaded_allocator(str(maps)) == "system"
    maps.write_text("7f00-7f01 r-xp 0 00:00 1 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n")
    assert allocator.loaded_allocator(str(maps)) == "tcmalloc"
    assert allocator.loaded_allocator(str(tmp_path / "absent")) == "system"


def test_preload_env_reexecutes_once_and_respects_opt_out_and_existing_preloads():
    lib = "/usr/lib/libtcmalloc_minimal.so.4"
    env = allocator.preload_env({"PATH": "/bin"}, lib)
    assert env["LD_PRELOAD"] == lib and env["PATH"] == "/bin"
    assert allocator.preload_env(env, lib) is None  # the re-executed process does not loop
    assert allocator.preload_env({"LD_PRELOAD": "/x/libfoo.so"}, lib)["LD_PRELOAD"] == f"{lib}:/x/libfoo.so"
    assert allocator.preload_env({"LD_PRELOAD": "/x/libjemalloc.so.2"}, lib) is None
    assert allocator.preload_env({"JAXNAS_ALLOCATOR": "system"}, lib) is None
    assert allocator.preload_env({}, None) is None


@pytest.mark.skipif(not sys.platform.startswith("linux") or allocator.find_tcmalloc() is None,
                    reason="tcmalloc is not installed (Debian: apt-get install libtcmalloc-minimal4)")
def test_reexec_runs_the_same_command_on_tcmalloc():
    code = "from jaxnas import allocator; allocator.reexec_with_tcmalloc(); print(allocator.loaded_allocator())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "tcmalloc"
    opted_out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               env={"JAXNAS_ALLOCATOR": "system", "PATH": "/usr/bin:/bin"}).stdout
    assert opted_out.strip() == "system"
