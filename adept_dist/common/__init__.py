"""What every part of the package may use: errors and exit codes, atomic files, strict file schemas, progress bars, metric trackers, the run folder's lock, the launcher watch."""
