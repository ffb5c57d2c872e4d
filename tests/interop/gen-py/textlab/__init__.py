__all__ = ['ttypes', 'constants', 'TextLab']
