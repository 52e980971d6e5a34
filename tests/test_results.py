

def test_published_tables_show_no_nan_or_scientific_notation():
    import numpy as np
    import pandas as pd

    from cnnlab.results import markdown_table

    text = markdown_table(pd.DataFrame({"model": ["fusion", "median"],
                                        "parameters": [2280160.0, np.nan],
                                        "R2": [0.12345, -0.0001], "n": [134, 134]}))
    assert "2,280,160" in text and "0.123" in text and "–" in text
    assert "nan" not in text and "e+06" not in text and "-0 " not in text
