"""selfreward: Self-Rewarding Language Models (Yuan et al., 2024), small and readable."""

__version__ = "0.1.0"
