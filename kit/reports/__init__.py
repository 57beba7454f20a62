"""Reports: metrics, pictures, the fidelity of synthetic images, the val report."""
