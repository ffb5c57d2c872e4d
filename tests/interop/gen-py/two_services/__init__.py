__all__ = ['ttypes', 'constants', 'Calc', 'Echo']
