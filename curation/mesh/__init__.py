"""MeSH: NLM's XML parser and fetcher (`m1 mesh`), the vocabularies, and the offline classifier's matcher.

m1 mesh fetch --year 2025 --dir data/mesh     download descYYYY.xml and qualYYYY.xml from NLM, then parse
m1 mesh parse DESC.xml QUAL.xml --dir DIR      parse local files into Parquet tables
m1 mesh show [--dir DIR]                       the 76 qualifiers with their codes, and what the vocabulary lacks
m1 mesh classify "question text" [--dir DIR]   the offline classifier on one question, with its evidence
"""
