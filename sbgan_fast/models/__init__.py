"""sbgan_fast.models"""
