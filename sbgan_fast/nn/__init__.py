"""sbgan_fast.nn"""
