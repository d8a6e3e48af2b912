"""sbgan_fast.train"""
