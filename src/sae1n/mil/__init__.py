"""sae1n.mil"""
