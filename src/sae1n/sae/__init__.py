"""sae1n.sae"""
