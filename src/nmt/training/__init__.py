"""Lightning training: the LightningModule, the DataModule and the callbacks."""
