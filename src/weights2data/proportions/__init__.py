"""`weights2data mixture`: in what proportions did which domains go into a fine-tune?"""
