__all__ = ['ttypes', 'constants', 'KatranService']
