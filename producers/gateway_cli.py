"""``cxr-triage dicom-gateway``: receive chest radiographs over DICOM (C-STORE, C-ECHO) and publish studies."""

from __future__ import annotations

import click

from cxr_triage.settings import load_settings


@click.command("dicom-gateway")
def dicom_gateway() -> None:
    """Serve DICOM C-STORE / C-ECHO on CXR_DICOM_PORT as CXR_DICOM_AE_TITLE until SIGTERM / Ctrl-C.

    \b
    Accepts CR, DX (for presentation and processing) and secondary captures of radiographs; anything else
    gets a DIMSE failure status with the reason (and a dead letter). A study is published once its
    association ends or no image of it came for CXR_DICOM_QUIET_S seconds, with all its images.

    \b
    Example:
      cxr-triage dicom-gateway &
      storescu -aec CXR_TRIAGE 127.0.0.1 11112 study-folder/ +sd
    """
    from producers.gateway_app import run_gateway

    raise SystemExit(run_gateway(load_settings()))
