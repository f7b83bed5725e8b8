"""provium.toml: suite root discovery, profiles, and one-line errors."""

import dataclasses

import pytest

from provium import config, kernels
from provium.errors import ConfigError


@pytest.fixture
def kernel(tmp_path):
    path = tmp_path / "vmlinuz"
    path.write_bytes(b"kernel")
    return path


def write(tmp_path, text):
    (tmp_path / "provium.toml").write_text(text)
    return config.load(tmp_path)


def test_root_is_the_nearest_directory_with_provium_toml(tmp_path):
    (tmp_path / "provium.toml").write_text("")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert config.find_root(deep) == tmp_path


def test_without_provium_toml_the_root_is_the_start_directory(tmp_path):
    assert config.find_root(tmp_path) == tmp_path
    assert config.load(tmp_path).profile_names() == ["minimal"]


def test_profile_keys_and_relative_paths(tmp_path, kernel):
    cfg = write(tmp_path, '[profiles.big]\nkernel = "vmlinuz"\nmemory = "1G"\ncpus = 2\n'
                          'cmdline = "loglevel=7"\nmodules = ["ext4"]\n')
    profile = cfg.profile("big")
    assert profile.kernel == kernel
    assert (profile.memory_mib, profile.cpus, profile.cmdline, profile.modules) == (1024, 2, "loglevel=7", ("ext4",))


def test_syntax_error_names_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match=r"provium.toml: syntax error: .*line 2"):
        write(tmp_path, '[profiles.x]\nkernel = \n')


def test_unknown_key_names_file_profile_and_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        write(tmp_path, '[profiles.x]\nkernal = "a"\n')
    assert str(info.value).startswith(f"{tmp_path / 'provium.toml'}: profile 'x': key 'kernal': unknown key")
    assert "\n" not in str(info.value)


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match="profile 'x': key 'cpus': must be an integer, not a string"):
        write(tmp_path, '[profiles.x]\ncpus = "2"\n')


def test_missing_kernel_is_named(tmp_path):
    cfg = write(tmp_path, '[profiles.x]\nkernel = "nope"\n')
    with pytest.raises(ConfigError, match=r"profile 'x': key 'kernel': file not found: .*nope"):
        cfg.profile("x")


def test_unknown_profile_lists_the_known_ones(tmp_path, kernel):
    cfg = write(tmp_path, '[profiles.big]\nkernel = "vmlinuz"\n')
    with pytest.raises(ConfigError, match=r"unknown profile 'small' \(known: big, minimal\)"):
        cfg.profile("small")


@pytest.mark.parametrize("text, mib", [("512M", 512), ("1G", 1024), ("2G", 2048), ("1024m", 1024), ("768MiB", 768)])
def test_memory_sizes(text, mib):
    assert config.parse_memory(text) == mib


@pytest.mark.parametrize("text", ["lots", "12", "1.5G", "32M", 512])
def test_bad_memory_sizes(text):
    with pytest.raises(ConfigError, match="memory"):
        config.parse_memory(text)


def test_newest_host_kernel_needs_matching_modules(tmp_path):
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    for version in ("6.1.0-9-amd64", "6.1.0-10-amd64", "6.2.0-1-amd64"):
        (boot / f"vmlinuz-{version}").write_bytes(b"")
    for version in ("6.1.0-9-amd64", "6.1.0-10-amd64"):
        (modules / version).mkdir(parents=True)
    kernel, mods = config.newest_host_kernel(str(boot), str(modules))
    assert kernel.name == "vmlinuz-6.1.0-10-amd64"
    assert mods == modules / "6.1.0-10-amd64"


def test_available_modules_are_a_list_of_names(tmp_path, kernel):
    cfg = write(tmp_path, '[profiles.media]\nkernel = "vmlinuz"\navailable_modules = ["videodev", "dummy"]\n'
                          '[profiles.everything]\nkernel = "vmlinuz"\navailable_modules = ["*"]\n')
    assert cfg.profile("media").available_modules == ("videodev", "dummy")
    assert cfg.profile("media").modules == ()
    assert cfg.profile("everything").available_modules == ("*",)


@pytest.mark.parametrize("text, message", [
    ('available_modules = "videodev"', "key 'available_modules': must be a list, not a string"),
    ('available_modules = ["videodev", 3]', "key 'available_modules': entry 2 \\(3\\) is not a module name"),
    ('modules = [""]', "key 'modules': entry 1 \\(''\\) is not a module name"),
    ('modules = ["*"]', "key 'modules': \"\\*\" \\(the whole tree\\) is for available_modules"),
])
def test_bad_module_lists_are_named(tmp_path, text, message):
    with pytest.raises(ConfigError, match=f"profile 'x': {message}"):
        write(tmp_path, f"[profiles.x]\n{text}\n")


def test_debug_symbols_is_off_unless_an_apt_kernel_asks_for_it(tmp_path):
    cfg = write(tmp_path, '[profiles.cloud]\nkernel = "apt:linux-image-6.12-cloud-amd64"\n'
                          '[profiles.cloud-debug]\nkernel = "apt:linux-image-6.12-cloud-amd64"\ndebug_symbols = true\n'
                          '[profiles.host]\ndebug_symbols = false\n')
    plain, debug = cfg.profile("cloud"), cfg.profile("cloud-debug")
    assert (plain.debug_symbols, debug.debug_symbols) == (False, True)
    assert kernels.origin(plain) == kernels.origin(debug) == "apt:linux-image-6.12-cloud-amd64"
    assert plain == dataclasses.replace(debug, name="cloud", debug_symbols=False)
    assert cfg.profile("host").debug_symbols is False


@pytest.mark.parametrize("table, message", [
    ('kernel_source = "linux"', 'a kernel built from kernel_source has line tables when its kconfig asks for them '
                                '(the "debug" fragment)'),
    ('kernel = "vmlinuz"', "the host kernel's or a kernel file's debug symbols are read from /usr/lib/debug"),
    ("", "the host kernel's or a kernel file's debug symbols are read from /usr/lib/debug"),
])
def test_debug_symbols_without_an_apt_kernel_is_a_one_line_error(tmp_path, table, message):
    with pytest.raises(ConfigError) as info:
        write(tmp_path, f"[profiles.x]\n{table}\ndebug_symbols = true\n")
    error = str(info.value)
    assert error.startswith(f"{tmp_path / 'provium.toml'}: profile 'x': key 'debug_symbols': "
                            f"is for kernel = \"apt:PACKAGE\": {message}")
    assert "\n" not in error


def test_debug_symbols_takes_true_or_false(tmp_path):
    with pytest.raises(ConfigError, match="profile 'x': key 'debug_symbols': must be true or false, not a string"):
        write(tmp_path, '[profiles.x]\nkernel = "apt:linux-image-amd64"\ndebug_symbols = "yes"\n')
