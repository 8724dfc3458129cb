"""A trained adapter's files: the adapter format, the PEFT export, the merged export."""
