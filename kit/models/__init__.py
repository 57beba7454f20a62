"""Models: timm models and weights files (EVA-02, EVA-X), the precision they run at, running them
over images, averaging epochs, blending runs."""
