"""sae1n.wsi"""
