"""The command lines: adept-train, adept-predict, adept-export, adept-plan (imported by no module of the package)."""
