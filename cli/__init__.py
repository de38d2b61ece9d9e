"""The `mycelium` command for operators."""
