"""sbgan_fast.data"""
