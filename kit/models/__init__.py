"""Models: timm models and weights files (EVA-02, EVA-X), running them over images, averaging
epochs, blending runs, the generator.
"""
