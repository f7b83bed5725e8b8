"""The guest's module tree: modprobe, modprobe -r and modinfo in real guests, through the CLI."""

import re

from provium.config import newest_host_kernel
from provium.kernel import ModuleTree

_, MODULES = newest_host_kernel()
RELEASE = MODULES.name


def copy_module(suite, name, as_name):
    """A module of the guest's kernel, uncompressed, written under the suite root as `as_name`."""
    tree = ModuleTree(MODULES)
    (suite.root / as_name).write_bytes(tree.module_bytes(tree.load_order([name])[-1]))


def run(suite, text):
    suite.write("t.lua", text)
    result = suite.run("run", "t.lua", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\d+ passed, 0 failed, 0 skipped$", result.stdout.strip()), result.stdout
    assert suite.qemu_pids() == []
    return result.stdout


def test_the_default_profile_has_a_module_tree_for_its_boot_modules(suite):
    copy_module(suite, "dummy", "x.ko")
    run(suite, f"""\
        local vm = provium.create("minimal")
        vm:boot{{memory = "256M", files = {{["/root/x.ko"] = "x.ko"}}}}

        local function loaded(name)
          return ("\\n" .. vm:read_file("/proc/modules")):find("\\n" .. name .. " ", 1, true) ~= nil
        end

        test("the boot modules are loaded and listed in modules.dep", function()
          assert(loaded("virtio_blk"))
          local dep = vm:read_file("/lib/modules/{RELEASE}/modules.dep")
          assert_contains(dep, "kernel/drivers/block/virtio_blk.ko: ")
        end)

        test("modprobe -r removes a shipped module and modprobe loads it again", function()
          -- busybox exits 1 when a dependency stays in use (virtio is used by virtio_console),
          -- though the module itself is removed: the state is what counts
          vm:exec("modprobe -r virtio_blk")
          assert(not loaded("virtio_blk"), "virtio_blk removed")
          assert(loaded("virtio"), "its dependency still in use stays")
          local r = vm:exec("modprobe virtio_blk")
          assert(r.ok, r.stderr.value)
          assert(loaded("virtio_blk"), "virtio_blk loaded again")
          assert_contains(vm:exec("lsmod").stdout, "virtio_blk")
        end)

        test("modinfo by name prints the module's fields", function()
          local r = vm:exec("modinfo virtio_blk")
          assert(r.ok, r.stderr.value)
          assert_contains(r.stdout, "filename:       /lib/modules/{RELEASE}/kernel/drivers/block/virtio_blk.ko")
          assert_contains(r.stdout, "description:    Virtio block driver")
          assert_contains(r.stdout, "vermagic:       {RELEASE} ")
        end)

        test("modinfo by path reads a copied module", function()
          local r = vm:exec("modinfo /root/x.ko")
          assert(r.ok, r.stderr.value)
          assert_contains(r.stdout, "filename:       /root/x.ko")
          assert_contains(r.stdout, "alias:          rtnl-link-dummy")
          assert_eq("GPL", vm:exec("modinfo -F license /root/x.ko").stdout.trim())
        end)

        test("a module that is not shipped fails modprobe with its name", function()
          local r = vm:exec("modprobe dummy")
          assert_eq(1, r.exit_code)
          assert_eq("modprobe: module dummy not found in modules.dep\\n", r.stderr.value)
          assert(not loaded("dummy"))
        end)

        test("insmod of a copied module still works", function()
          assert(vm:exec("insmod /root/x.ko").ok)
          assert(vm:exec("ip link add d0 type dummy").ok)
        end)
        """)


def test_available_modules_are_shipped_not_loaded_and_modprobe_handles_their_dependencies(suite):
    # v4l2-async needs videodev's symbols, as an out-of-tree V4L2 driver would: a test loads
    # the in-tree dependency itself before insmod
    copy_module(suite, "v4l2-async", "my.ko")
    suite.write("provium.toml", '[profiles.media]\navailable_modules = ["videodev", "dummy"]\n')
    run(suite, f"""\
        local vm = provium.create("media")
        vm:boot{{memory = "256M", files = {{["/root/my.ko"] = "my.ko"}}}}

        local function loaded(name)
          return ("\\n" .. vm:read_file("/proc/modules")):find("\\n" .. name .. " ", 1, true) ~= nil
        end

        test("available modules are not loaded at boot", function()
          assert(not loaded("videodev") and not loaded("mc") and not loaded("dummy"))
          assert(loaded("virtio_blk"))
        end)

        test("an out-of-tree module needs its in-tree dependency, which modprobe loads", function()
          local r = vm:exec("insmod /root/my.ko")
          assert(not r.ok, "insmod without videodev must fail")
          r = vm:exec("modprobe videodev")
          assert(r.ok, r.stderr.value)
          assert(loaded("videodev") and loaded("mc"))
          r = vm:exec("insmod /root/my.ko")
          assert(r.ok, r.stderr.value)
          assert_contains(vm:exec("lsmod").stdout, "v4l2_async")
          assert(vm:exec("rmmod v4l2_async").ok)
        end)

        test("loading leaves no complaint in the kernel log", function()
          assert_eq("", vm:dmesg("Invalid ELF header"))
        end)

        test("modprobe -r removes the module and its unused dependencies", function()
          local r = vm:exec("modprobe -r videodev")
          assert(r.ok, r.stderr.value)
          assert(not loaded("videodev") and not loaded("mc"))
        end)

        test("modinfo names the shipped file and its dependencies", function()
          local r = vm:exec("modinfo videodev")
          assert(r.ok, r.stderr.value)
          assert_contains(r.stdout, "filename:       /lib/modules/{RELEASE}/kernel/drivers/media/"
                                    .. "v4l2-core/videodev.ko\\n")
          assert_contains(r.stdout, "depends:        mc")
          assert_contains(vm:exec("modinfo /root/my.ko").stdout, "depends:        videodev,mc")
        end)

        test("the kernel loads a shipped module on demand through modules.alias", function()
          local r = vm:exec("ip link add d0 type dummy")
          assert(r.ok, r.stderr.value)
          assert(loaded("dummy"))
          vm:exec("ip link del d0")
          assert(vm:exec("modprobe -r dummy").ok)
        end)

        test("a module outside the profile's list is not shipped", function()
          local r = vm:exec("modprobe veth")
          assert_eq(1, r.exit_code)
          assert_eq("modprobe: module veth not found in modules.dep\\n", r.stderr.value)
        end)
        """)
