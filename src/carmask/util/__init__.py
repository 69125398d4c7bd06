"""Small shared helpers every layer may use: atomic writes, output locks, bounded thread pools,
progress callbacks. Standard library only."""
