"""sae1n.viz"""
