"""sae1n.neurons"""
