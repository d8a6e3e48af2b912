"""sbgan_fast.metrics"""
