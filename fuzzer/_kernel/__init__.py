"""The modelled kernel core shared by every MMU: boot, CPU hotplug, mm code, code patching."""
