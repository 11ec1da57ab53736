"""sae1n.demo"""
