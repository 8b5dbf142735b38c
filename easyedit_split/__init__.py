"""easyedit_split: SPLIT steering and the unified preference-utility analysis for EasyEdit users.

Every steering method here produces one intervention type, a dynamic weight update
``delta(x; m) = m * (x @ dW + db)`` added to a decoder layer's output.
"""
__version__ = "0.1.0"
