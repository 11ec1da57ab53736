"""sae1n.encoders"""
