"""Synthetic SCSI storage: VHD files and the storvsp/storvsc pair."""
