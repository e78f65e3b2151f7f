"""The subcommands of ``voxloc``, one module each; ``clients.cli`` registers them."""
