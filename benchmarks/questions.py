"""The arithmetic word problems the speed benchmarks ask (no imports: the GPU kit reads them without pydantic)."""

QUESTIONS = [
    "A baker makes 24 muffins in the morning and 18 in the afternoon. She sells 30 of them. How many are left?",
    "Tom has 3 boxes with 12 pencils each. He gives away 7 pencils. How many pencils does he have now?",
    "A train travels 60 km per hour for 2.5 hours. How far does it travel?",
    "What is 15% of 240?",
    "A rectangle is 7 cm wide and 12 cm long. What is its area?",
    "Anna reads 18 pages a day. How many pages does she read in two weeks?",
    "A shirt costs $25 and is on sale for 20% off. What is the sale price?",
    "If 5 pens cost $3.50, how much do 12 pens cost?",
]
