"""Synthetic question pools of any size, in the real source layouts, with known duplicates.

``generate_pool`` writes rows built from templates over a small table of clinical facts (conditions, their
findings, drugs, organisms, mechanisms), with the length profile of the real pools: MedQA-style vignettes of
~100-250 words, MedMCQA-style stems of ~10-40 words, options of 1-10 words. A known fraction of rows are
exact duplicates of an earlier row (same question and options, new id) and near duplicates (one or two
small edits: adjacent words swapped, a word inserted, punctuation changed, plus sometimes a case change).
Which rows are duplicates of which is written to ``duplicates.json`` for the dedup tests.

The text is generated for this project; medically it is plausible but not curated, so it is for load and
pipeline tests, never for training. Every row depends only on (seed, format, row index, duplicate shares):
a copy draws its original (any earlier row) from its own generator and renders it again, so the row range can
be cut into shards built anywhere, in any order, and copies still reach across shards. ``--ray`` builds the
50,000-row shards as Ray tasks that each write their own part file (10M rows in minutes on a few cores; the
driver keeps 8 bytes per row to find template collisions); without it one file per format is written by the
driver, from shards built in ``--workers`` processes. The rows are the same either way. (Before issue 16 a
chunk's rows came from one generator per 50,000-row chunk and copies stayed inside their chunk: pools of the
same seed differ from those written before.)

    m1 synth OUT_DIR --rows 10000000 --seed 0 --format mixed --ray [--parquet]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.jobenv import local_ray_env, nonempty_path
from curation.prompt import normalize_text


@dataclass(frozen=True)
class Fact:
    condition: str
    subject: str  # MedMCQA-style subject
    topic: str
    symptoms: tuple[str, ...]
    sign: str
    lab: str
    drug: str
    mechanism: str
    organism: str | None = None
    ages: tuple[int, int] = (20, 70)
    sex: str | None = None  # "man" / "woman" when the condition is sex-specific


FACTS: tuple[Fact, ...] = (
    Fact(
        "community-acquired pneumonia",
        "Medicine",
        "Respiratory infections",
        ("fever", "productive cough", "pleuritic chest pain"),
        "dullness to percussion and bronchial breath sounds over the right lower lobe",
        "a leukocyte count of 16,800/mm3 with 85% neutrophils",
        "amoxicillin",
        "inhibition of bacterial cell wall synthesis",
        "Streptococcus pneumoniae",
        (25, 80),
    ),
    Fact(
        "infective endocarditis",
        "Medicine",
        "Cardiology",
        ("fever", "fatigue", "night sweats"),
        "a new holosystolic murmur at the apex and splinter hemorrhages under the fingernails",
        "three sets of blood cultures growing gram-positive cocci in clusters",
        "vancomycin",
        "binding of D-Ala-D-Ala to block peptidoglycan polymerization",
        "Staphylococcus aureus",
        (20, 60),
    ),
    Fact(
        "pulmonary tuberculosis",
        "Microbiology",
        "Mycobacteria",
        ("chronic cough", "weight loss", "night sweats"),
        "crackles over the right upper lobe",
        "acid-fast bacilli on sputum microscopy",
        "isoniazid",
        "inhibition of mycolic acid synthesis",
        "Mycobacterium tuberculosis",
        (20, 70),
    ),
    Fact(
        "primary syphilis",
        "Microbiology",
        "Spirochetes",
        ("a painless genital ulcer",),
        "a single indurated ulcer with a clean base and nontender inguinal lymphadenopathy",
        "a positive rapid plasma reagin test",
        "benzathine penicillin G",
        "inhibition of bacterial cell wall synthesis",
        "Treponema pallidum",
        (18, 45),
    ),
    Fact(
        "Lyme disease",
        "Microbiology",
        "Spirochetes",
        ("fatigue", "joint pain", "an expanding rash"),
        "an erythematous annular plaque with central clearing on the thigh",
        "positive IgM antibodies on enzyme immunoassay",
        "doxycycline",
        "binding of the 30S ribosomal subunit to block aminoacyl-tRNA attachment",
        "Borrelia burgdorferi",
        (10, 60),
    ),
    Fact(
        "Pneumocystis pneumonia",
        "Microbiology",
        "Opportunistic infections",
        ("progressive dyspnea", "dry cough", "low-grade fever"),
        "tachypnea with clear lungs on auscultation",
        "a CD4+ T-lymphocyte count of 90/mm3",
        "trimethoprim-sulfamethoxazole",
        "sequential inhibition of bacterial folate synthesis",
        "Pneumocystis jirovecii",
        (25, 55),
    ),
    Fact(
        "cryptococcal meningitis",
        "Microbiology",
        "Fungal infections",
        ("headache", "fever", "confusion"),
        "mild nuchal rigidity",
        "encapsulated yeast on India ink staining of the cerebrospinal fluid",
        "amphotericin B",
        "binding of ergosterol to form pores in the fungal membrane",
        "Cryptococcus neoformans",
        (25, 60),
    ),
    Fact(
        "acute pyelonephritis",
        "Medicine",
        "Nephrology",
        ("fever", "flank pain", "dysuria"),
        "costovertebral angle tenderness",
        "white blood cell casts on urinalysis",
        "ciprofloxacin",
        "inhibition of DNA gyrase",
        "Escherichia coli",
        (18, 50),
        "woman",
    ),
    Fact(
        "pseudomembranous colitis",
        "Microbiology",
        "Anaerobes",
        ("watery diarrhea", "crampy abdominal pain"),
        "diffuse lower abdominal tenderness",
        "a positive stool toxin assay",
        "oral vancomycin",
        "binding of D-Ala-D-Ala to block peptidoglycan polymerization",
        "Clostridioides difficile",
        (55, 85),
    ),
    Fact(
        "diabetic ketoacidosis",
        "Medicine",
        "Endocrinology",
        ("polyuria", "polydipsia", "vomiting"),
        "dry mucous membranes and deep, rapid respirations",
        "glucose 540 mg/dL with an anion gap of 24 mEq/L",
        "intravenous insulin",
        "activation of the insulin receptor tyrosine kinase",
        None,
        (10, 35),
    ),
    Fact(
        "Graves disease",
        "Medicine",
        "Endocrinology",
        ("heat intolerance", "palpitations", "weight loss"),
        "a diffusely enlarged nontender thyroid gland and proptosis",
        "a low serum TSH with an elevated free T4",
        "methimazole",
        "inhibition of thyroid peroxidase",
        None,
        (20, 50),
        "woman",
    ),
    Fact(
        "primary hypothyroidism",
        "Medicine",
        "Endocrinology",
        ("fatigue", "cold intolerance", "constipation"),
        "dry skin and delayed relaxation of the ankle reflexes",
        "an elevated serum TSH with a low free T4",
        "levothyroxine",
        "activation of nuclear thyroid hormone receptors",
        None,
        (30, 75),
        "woman",
    ),
    Fact(
        "Addison disease",
        "Medicine",
        "Endocrinology",
        ("fatigue", "salt craving", "dizziness on standing"),
        "hyperpigmentation of the palmar creases and buccal mucosa",
        "a sodium of 128 mEq/L and potassium of 5.9 mEq/L",
        "hydrocortisone",
        "activation of intracellular glucocorticoid receptors",
        None,
        (25, 60),
    ),
    Fact(
        "acute gout",
        "Medicine",
        "Rheumatology",
        ("sudden severe pain in the big toe",),
        "a swollen, erythematous, exquisitely tender first metatarsophalangeal joint",
        "negatively birefringent needle-shaped crystals in the synovial fluid",
        "indomethacin",
        "nonselective inhibition of cyclooxygenase",
        None,
        (40, 75),
        "man",
    ),
    Fact(
        "rheumatoid arthritis",
        "Medicine",
        "Rheumatology",
        ("morning stiffness lasting over an hour", "symmetric hand pain"),
        "boggy swelling of the metacarpophalangeal joints",
        "positive anti-cyclic citrullinated peptide antibodies",
        "methotrexate",
        "inhibition of dihydrofolate reductase",
        None,
        (30, 65),
        "woman",
    ),
    Fact(
        "systemic lupus erythematosus",
        "Medicine",
        "Rheumatology",
        ("joint pain", "fatigue", "a facial rash"),
        "an erythematous malar rash that spares the nasolabial folds",
        "positive anti-double-stranded DNA antibodies",
        "hydroxychloroquine",
        "interference with lysosomal antigen processing",
        None,
        (18, 45),
        "woman",
    ),
    Fact(
        "acute myocardial infarction",
        "Medicine",
        "Cardiology",
        ("crushing substernal chest pain", "diaphoresis", "nausea"),
        "an S4 gallop",
        "ST-segment elevations in leads II, III and aVF",
        "aspirin",
        "irreversible inhibition of cyclooxygenase",
        None,
        (45, 80),
        "man",
    ),
    Fact(
        "atrial fibrillation",
        "Medicine",
        "Cardiology",
        ("palpitations", "lightheadedness"),
        "an irregularly irregular pulse",
        "absent P waves with an irregular ventricular rhythm on ECG",
        "metoprolol",
        "selective blockade of beta-1 adrenergic receptors",
        None,
        (55, 85),
    ),
    Fact(
        "congestive heart failure",
        "Medicine",
        "Cardiology",
        ("exertional dyspnea", "orthopnea", "leg swelling"),
        "jugular venous distension and bilateral pitting edema",
        "an elevated serum B-type natriuretic peptide",
        "furosemide",
        "inhibition of the Na-K-2Cl cotransporter in the thick ascending limb",
        None,
        (55, 85),
    ),
    Fact(
        "pulmonary embolism",
        "Medicine",
        "Respiratory medicine",
        ("sudden dyspnea", "pleuritic chest pain"),
        "tachycardia and a swollen, tender left calf",
        "a segmental pulmonary artery filling defect on CT angiography",
        "heparin",
        "potentiation of antithrombin III",
        None,
        (25, 75),
    ),
    Fact(
        "asthma exacerbation",
        "Medicine",
        "Respiratory medicine",
        ("wheezing", "shortness of breath", "chest tightness"),
        "diffuse expiratory wheezes and use of accessory muscles",
        "a peak expiratory flow of 45% of predicted",
        "albuterol",
        "agonism at beta-2 adrenergic receptors",
        None,
        (8, 40),
    ),
    Fact(
        "chronic obstructive pulmonary disease",
        "Medicine",
        "Respiratory medicine",
        ("chronic cough", "progressive dyspnea"),
        "a barrel-shaped chest and prolonged expiration",
        "an FEV1/FVC ratio of 0.58 after bronchodilator",
        "tiotropium",
        "antagonism of muscarinic M3 receptors",
        None,
        (50, 80),
    ),
    Fact(
        "peptic ulcer disease",
        "Medicine",
        "Gastroenterology",
        ("burning epigastric pain", "early satiety"),
        "epigastric tenderness without guarding",
        "a positive urea breath test",
        "omeprazole",
        "irreversible inhibition of the H+/K+ ATPase",
        "Helicobacter pylori",
        (30, 70),
    ),
    Fact(
        "acute pancreatitis",
        "Surgery",
        "Pancreas",
        ("severe epigastric pain radiating to the back", "vomiting"),
        "epigastric tenderness and hypoactive bowel sounds",
        "a serum lipase three times the upper limit of normal",
        "intravenous crystalloid fluids",
        "restoration of intravascular volume",
        None,
        (30, 70),
    ),
    Fact(
        "acute appendicitis",
        "Surgery",
        "Acute abdomen",
        ("periumbilical pain migrating to the right lower quadrant", "anorexia"),
        "tenderness at McBurney point with rebound",
        "a leukocyte count of 14,200/mm3",
        "cefoxitin",
        "inhibition of bacterial cell wall synthesis",
        None,
        (10, 35),
    ),
    Fact(
        "iron deficiency anemia",
        "Pathology",
        "Hematology",
        ("fatigue", "exertional dyspnea"),
        "conjunctival pallor and spoon-shaped nails",
        "a low serum ferritin with microcytic, hypochromic erythrocytes",
        "ferrous sulfate",
        "replacement of iron stores for heme synthesis",
        None,
        (18, 50),
        "woman",
    ),
    Fact(
        "vitamin B12 deficiency",
        "Pathology",
        "Hematology",
        ("fatigue", "numbness of the feet"),
        "decreased vibration sense in both lower extremities",
        "macrocytic anemia with hypersegmented neutrophils",
        "intramuscular cyanocobalamin",
        "cofactor replacement for methylmalonyl-CoA mutase",
        None,
        (50, 85),
    ),
    Fact(
        "chronic myeloid leukemia",
        "Pathology",
        "Hematology",
        ("early satiety", "fatigue", "weight loss"),
        "massive splenomegaly",
        "a leukocyte count of 112,000/mm3 with the BCR-ABL fusion gene",
        "imatinib",
        "inhibition of the BCR-ABL tyrosine kinase",
        None,
        (40, 70),
    ),
    Fact(
        "heparin-induced thrombocytopenia",
        "Pharmacology",
        "Anticoagulants",
        ("a painful swollen leg",),
        "a tender, swollen right calf",
        "a platelet count that fell from 240,000 to 90,000/mm3",
        "argatroban",
        "direct inhibition of thrombin",
        None,
        (45, 80),
    ),
    Fact(
        "generalized anxiety disorder",
        "Psychiatry",
        "Anxiety disorders",
        ("excessive worry", "poor sleep", "muscle tension"),
        "a normal physical examination",
        "normal thyroid function tests",
        "sertraline",
        "selective inhibition of serotonin reuptake",
        None,
        (20, 50),
    ),
    Fact(
        "bipolar I disorder",
        "Psychiatry",
        "Mood disorders",
        ("decreased need for sleep", "pressured speech", "grandiosity"),
        "rapid speech and flight of ideas",
        "a negative urine toxicology screen",
        "lithium",
        "inhibition of inositol monophosphatase",
        None,
        (18, 35),
    ),
    Fact(
        "schizophrenia",
        "Psychiatry",
        "Psychotic disorders",
        ("auditory hallucinations", "social withdrawal"),
        "flat affect and disorganized speech",
        "a negative urine toxicology screen",
        "risperidone",
        "antagonism of dopamine D2 and serotonin 5-HT2A receptors",
        None,
        (18, 30),
    ),
    Fact(
        "open-angle glaucoma",
        "Ophthalmology",
        "Glaucoma",
        ("gradual loss of peripheral vision",),
        "an increased cup-to-disc ratio on funduscopy",
        "an intraocular pressure of 28 mm Hg",
        "latanoprost",
        "increased uveoscleral outflow of aqueous humor",
        None,
        (50, 85),
    ),
    Fact(
        "Parkinson disease",
        "Medicine",
        "Neurology",
        ("resting tremor", "slowness of movement"),
        "cogwheel rigidity and a shuffling gait",
        "normal findings on MRI of the brain",
        "carbidopa-levodopa",
        "conversion to dopamine in the central nervous system",
        None,
        (55, 85),
        "man",
    ),
    Fact(
        "myasthenia gravis",
        "Medicine",
        "Neurology",
        ("double vision", "drooping eyelids worse in the evening"),
        "bilateral ptosis that worsens with sustained upward gaze",
        "positive acetylcholine receptor antibodies",
        "pyridostigmine",
        "reversible inhibition of acetylcholinesterase",
        None,
        (20, 40),
        "woman",
    ),
    Fact(
        "absence epilepsy",
        "Pediatrics",
        "Neurology",
        ("brief staring spells", "declining school performance"),
        "staring episodes provoked by hyperventilation",
        "3-Hz spike-and-wave discharges on EEG",
        "ethosuximide",
        "blockade of thalamic T-type calcium channels",
        None,
        (5, 12),
    ),
    Fact(
        "preeclampsia",
        "Gynaecology & Obstetrics",
        "Hypertension in pregnancy",
        ("headache", "blurred vision"),
        "a blood pressure of 162/108 mm Hg and 2+ pitting edema",
        "proteinuria of 3+ on dipstick",
        "magnesium sulfate",
        "antagonism of calcium at the NMDA receptor",
        None,
        (18, 40),
        "woman",
    ),
    Fact(
        "bacterial vaginosis",
        "Gynaecology & Obstetrics",
        "Infections",
        ("a thin grayish vaginal discharge", "a fishy odor"),
        "a homogeneous gray discharge coating the vaginal walls",
        "clue cells on wet mount and vaginal pH of 5.0",
        "metronidazole",
        "formation of toxic free radicals that damage DNA",
        "Gardnerella vaginalis",
        (18, 45),
        "woman",
    ),
    Fact(
        "scabies",
        "Dermatology",
        "Infestations",
        ("intensely itchy rash worse at night",),
        "excoriated papules and burrows in the finger webs",
        "mites on skin scraping",
        "permethrin",
        "blockade of sodium channels causing parasite paralysis",
        "Sarcoptes scabiei",
        (5, 60),
    ),
    Fact(
        "malaria",
        "Microbiology",
        "Parasitology",
        ("cyclic fevers", "chills", "headache"),
        "splenomegaly and scleral icterus",
        "ring forms within erythrocytes on a thin blood smear",
        "artemether-lumefantrine",
        "generation of free radicals within the parasite food vacuole",
        "Plasmodium falciparum",
        (10, 60),
    ),
)

SETTINGS = (
    "the emergency department",
    "the clinic",
    "his primary care physician",
    "an urgent care center",
    "the physician",
)
DURATIONS = (
    "2 days",
    "3 days",
    "5 days",
    "1 week",
    "2 weeks",
    "3 weeks",
    "2 months",
    "6 months",
    "12 hours",
    "6 hours",
)
HISTORIES = (
    "{He} has a history of type 2 diabetes mellitus and hypertension.",
    "{He} has a history of hypothyroidism treated with levothyroxine.",
    "There is no significant past medical history.",
    "Past medical history is notable for an appendectomy at age 12.",
    "{He} has smoked one pack of cigarettes daily for 25 years.",
    "{He} drinks three to four beers on weekends and does not use illicit drugs.",
    "{He} recently returned from a two-week trip to rural Southeast Asia.",
    "Medications include lisinopril, atorvastatin and a daily multivitamin.",
    "Family history is significant for colon cancer in {his} father.",
    "{He} works as a farmer and lives with {his} spouse and two children.",
    "{He} was treated for a urinary tract infection 1 month ago.",
    "{He} is sexually active with one partner and uses condoms inconsistently.",
    "Immunizations are up to date.",
    "{He} takes no medications and has no known drug allergies.",
)
CHILD_HISTORIES = (
    "{He} was born at term after an uncomplicated pregnancy.",
    "Immunizations are up to date.",
    "{He} attends second grade and lives with {his} parents.",
    "There is no significant past medical history.",
    "{His} older brother has asthma.",
)
QUESTION_STEMS = {
    "diagnosis": "Which of the following is the most likely diagnosis?",
    "drug": "Which of the following is the most appropriate pharmacotherapy?",
    "organism": "Which of the following is the most likely causal organism?",
    "mechanism": "The most appropriate pharmacotherapy is started. Which of the following is the mechanism of action of this drug?",
}
# Every short template names a patient (age, sex, often a duration): with ~40 facts and a few templates,
# recall-only stems ("Drug of choice for X is:") would repeat by chance thousands of times in a 2M-row
# pool, and the duplicate counts would no longer be the designed ones.
SHORT_TEMPLATES = (
    ("{Age_a} {sex} is diagnosed with {condition}. Drug of choice is:", "drug"),
    ("Treatment of choice for {condition} in {age_a} {sex} is:", "drug"),
    (
        "{Age_a} {sex} with {s1} for {duration} has {organism} isolated. The diagnosis is:",
        "organism_of",
    ),
    (
        "In {age_a} {sex} suspected of {condition}, the most characteristic investigation finding is:",
        "lab",
    ),
    ("{Age_a} {sex} is started on {drug} for {duration}. Its mechanism of action is:", "mechanism"),
    (
        "{Age_a} {sex} presents with {s1} and {s2}. Examination shows {sign}. The most likely diagnosis is:",
        "diagnosis",
    ),
    (
        "{Age_a} {sex} has {s1} for {duration}. Investigations show {lab}. Which drug is most appropriate?",
        "drug",
    ),
    ("{Age_a} {sex} has {sign}. This finding is characteristic of:", "diagnosis"),
    ("{Age_a} {sex} has {s1} for {duration} and {sign}. The most likely diagnosis is:", "diagnosis"),
    ("{Age_a} {sex} with {condition} shows {lab}. The treatment of choice is:", "drug"),
    (
        "{Age_a} {sex} has {s1} and {s2} for {duration}. The likely causative organism is:",
        "organism",
    ),
)
HEADQA_CATEGORIES = ("medicine", "pharmacology", "biology", "nursery", "psychology", "chemistry")
HEADQA_TEMPLATES = (
    ("In {age_a} {sex} with {condition}, the treatment of choice is:", "drug"),
    ("Which finding is characteristic of {condition} in {age_a} {sex}?", "lab"),
    (
        "{Age_a} {sex} receives {drug} for {duration}. Its mechanism of action consists of:",
        "mechanism",
    ),
    (
        "{Age_a} {sex} consults for {s1} and {s2}. The examination shows {sign}. What is the most likely diagnosis?",
        "diagnosis",
    ),
)
PUBMED_OUTCOMES = (
    "mortality",
    "length of hospital stay",
    "readmission rates",
    "symptom scores",
    "quality of life",
    "relapse rates",
)
PUBMED_DESIGNS = (
    "a randomized controlled trial",
    "a retrospective cohort study",
    "a prospective observational study",
    "a case-control study",
)
MESH_EXTRA = (
    "Humans",
    "Male",
    "Female",
    "Adult",
    "Aged",
    "Middle Aged",
    "Retrospective Studies",
    "Prospective Studies",
    "Treatment Outcome",
    "Risk Factors",
)
INSERT_WORDS = ("the", "most", "usually", "clinically", "very", "also")

# The m1 pool's source mix (MedQA 10,178, MedMCQA 182,822, HeadQA 2,657, PubMedQA 500 rows of 196,157).
MIXED_SHARES = {"medqa": 10_178, "medmcqa": 182_822, "headqa": 2_657, "pubmedqa": 500}
SHARD_ROWS = 50_000  # rows per shard (a Ray task, a process's unit of work)


# ------------------------------------------------------------------------------------------ row builders


def _option_value(f: Fact, kind: str) -> str | None:
    if kind in ("diagnosis", "organism_of"):
        return f.condition
    if kind == "drug":
        return f.drug
    if kind == "organism":
        return f.organism
    if kind == "mechanism":
        return f.mechanism
    if kind == "lab":
        return f.lab
    raise ValueError(kind)


# kind -> every distinct answer value over FACTS, sorted (computed once; the wrong options are drawn from it)
_OPTION_VALUES = {
    kind: sorted({v for f in FACTS if (v := _option_value(f, kind))})
    for kind in ("diagnosis", "organism_of", "drug", "organism", "mechanism", "lab")
}


def _options(rng: random.Random, fact: Fact, kind: str, n: int) -> tuple[list[str], int]:
    """n option texts (the right one at a random position) and the answer position."""
    right = _option_value(fact, kind)
    assert right is not None
    wrong = rng.sample([v for v in _OPTION_VALUES[kind] if v != right], n - 1)
    answer = rng.randrange(n)
    wrong.insert(answer, right)
    return wrong, answer


def _aged(age: int) -> str:
    """'a 45-year-old', 'an 85-year-old', 'an 11-year-old'."""
    article = "an" if str(age).startswith("8") or age in (11, 18) else "a"
    return f"{article} {age}-year-old"


def _vignette(rng: random.Random, fact: Fact) -> tuple[str, str]:
    age = rng.randint(*fact.ages)
    sex = fact.sex or rng.choice(("man", "woman"))
    if age < 13:
        sex = "boy" if sex == "man" else "girl"
    symptoms = list(fact.symptoms)
    rng.shuffle(symptoms)
    complaint = symptoms[0] if len(symptoms) == 1 else ", ".join(symptoms[:-1]) + " and " + symptoms[-1]
    setting = rng.choice(SETTINGS)
    if setting == "his primary care physician" and sex not in ("man", "boy"):
        setting = "her primary care physician"
    if age < 13:
        setting = rng.choice(("the emergency department", "the pediatrician", "the clinic"))
    male = sex in ("man", "boy")
    pronouns = {
        "He": "He" if male else "She",
        "his": "his" if male else "her",
        "His": "His" if male else "Her",
    }
    pool = CHILD_HISTORIES if age < 13 else HISTORIES
    histories = [h.format(**pronouns) for h in rng.sample(pool, rng.randint(2, min(5, len(pool))))]
    temp = round(rng.uniform(36.6, 39.8), 1)
    pulse = rng.randint(62, 124)
    resp = rng.randint(12, 28)
    sys_bp = rng.randint(92, 168)
    lines = [
        f"{_aged(age).capitalize()} {sex} comes to {setting} because of {rng.choice(DURATIONS)} of {complaint}.",
        *histories,
        f"Temperature is {temp}°C ({round(temp * 9 / 5 + 32, 1)}°F), pulse is {pulse}/min, respirations are "
        f"{resp}/min, and blood pressure is {sys_bp}/{rng.randint(54, 102)} mm Hg.",
        f"Physical examination shows {fact.sign}.",
    ]
    if rng.random() < 0.8:
        lines.append(f"Laboratory studies show {fact.lab}.")
    if rng.random() < 0.5:
        lines.append(
            f"Pulse oximetry on room air shows an oxygen saturation of {rng.randint(88, 99)}%. "
            f"The remainder of the examination shows no abnormalities."
        )
    return " ".join(lines), sex


def medqa_row(rng: random.Random, n_options: int = 4) -> dict[str, Any]:
    fact = rng.choice(FACTS)
    kinds = ["diagnosis", "drug", "mechanism"] + (["organism"] if fact.organism else [])
    kind = rng.choice(kinds)
    vignette, _ = _vignette(rng, fact)
    options, answer = _options(rng, fact, kind, n_options)
    labels = "ABCDEFGHIJ"[:n_options]
    return {
        "question": f"{vignette} {QUESTION_STEMS[kind]}",
        "answer": options[answer],
        "options": dict(zip(labels, options, strict=True)),
        "meta_info": rng.choice(("step1", "step2&3")),
        "answer_idx": labels[answer],
        "metamap_phrases": [w.strip(".,") for w in vignette.split()[:12]],
    }


def _short_stem(rng: random.Random, templates: tuple[tuple[str, str], ...]) -> tuple[str, Fact, str]:
    while True:
        template, kind = rng.choice(templates)
        fact = rng.choice(FACTS)
        if ("{organism}" in template or kind == "organism") and not fact.organism:
            continue
        s1, s2 = (list(fact.symptoms) * 2)[:2] if len(fact.symptoms) < 2 else rng.sample(fact.symptoms, 2)
        sex = fact.sex or rng.choice(("man", "woman"))
        age = rng.randint(*fact.ages)
        if age < 13:
            sex = "boy" if sex == "man" else "girl"
        text = template.format(
            condition=fact.condition,
            organism=fact.organism,
            drug=fact.drug,
            s1=s1,
            s2=s2,
            sign=fact.sign,
            sign_cap=fact.sign[:1].upper() + fact.sign[1:],
            lab=fact.lab,
            age_a=_aged(age),
            Age_a=_aged(age).capitalize(),
            sex=sex,
            duration=rng.choice(DURATIONS),
        )
        return text, fact, kind


def medmcqa_row(rng: random.Random, row_id: str) -> dict[str, Any]:
    stem, fact, kind = _short_stem(rng, SHORT_TEMPLATES)
    options, answer = _options(rng, fact, kind, 4)
    explanation = (
        f"{fact.drug[:1].upper() + fact.drug[1:]} is preferred in {fact.condition}; it acts by {fact.mechanism}. "
        f"Typical findings include {fact.sign}."
    )
    return {
        "id": row_id,
        "question": stem,
        "opa": options[0],
        "opb": options[1],
        "opc": options[2],
        "opd": options[3],
        "cop": answer,
        "choice_type": "single",
        "exp": explanation if rng.random() < 0.8 else None,
        "subject_name": fact.subject,
        "topic_name": fact.topic,
    }


def headqa_row(rng: random.Random, number: int) -> dict[str, Any]:
    stem, fact, kind = _short_stem(rng, HEADQA_TEMPLATES)
    n = rng.choice((4, 4, 5))
    options, answer = _options(rng, fact, kind, n)
    year = rng.choice(range(2013, 2018))
    category = rng.choice(HEADQA_CATEGORIES)
    return {
        "name": f"Cuaderno_{year}_1_{category[0].upper()}",
        "year": str(year),
        "category": category,
        "qid": number,
        "qtext": stem,
        "ra": answer + 1,
        "image": "",
        "answers": [{"aid": i + 1, "atext": text} for i, text in enumerate(options)],
    }


def pubmedqa_row(rng: random.Random, pubid: int) -> dict[str, Any]:
    fact = rng.choice(FACTS)
    outcome = rng.choice(PUBMED_OUTCOMES)
    decision = rng.choices(("yes", "no", "maybe"), weights=(55, 34, 11))[0]
    n_patients = rng.randint(40, 2400)
    treated = rng.randint(n_patients // 5, n_patients // 2)
    p_value = {
        "yes": rng.uniform(0.001, 0.04),
        "no": rng.uniform(0.2, 0.9),
        "maybe": rng.uniform(0.04, 0.12),
    }[decision]
    design = rng.choice(PUBMED_DESIGNS)
    contexts = [
        f"The role of {fact.drug} in adults with {fact.condition} remains debated, and its effect on {outcome} "
        f"has not been established in routine practice.",
        f"We conducted {design} of {n_patients} patients with {fact.condition} admitted between "
        f"{rng.randint(2001, 2012)} and {rng.randint(2013, 2020)}, of whom {treated} received {fact.drug}. "
        f"The primary end point was {outcome}; secondary end points included adverse events.",
        f"{outcome[:1].upper() + outcome[1:]} differed between groups (adjusted odds ratio "
        f"{rng.uniform(0.4, 1.6):.2f}; 95% confidence interval {rng.uniform(0.2, 0.9):.2f} to "
        f"{rng.uniform(1.0, 2.4):.2f}; P = {p_value:.3f}). Adverse events occurred in {rng.randint(2, 19)}% of treated patients.",
    ]
    long_answer = {
        "yes": f"In patients with {fact.condition}, {fact.drug} was associated with improved {outcome}.",
        "no": f"{fact.drug[:1].upper() + fact.drug[1:]} did not improve {outcome} in patients with {fact.condition}.",
        "maybe": f"The effect of {fact.drug} on {outcome} is uncertain and warrants a larger trial.",
    }[decision]
    return {
        "pubid": pubid,
        "question": f"Does {fact.drug} improve {outcome} in patients with {fact.condition}?",
        "context": {
            "contexts": contexts,
            "labels": ["BACKGROUND", "METHODS", "RESULTS"],
            "meshes": sorted({fact.condition.title(), fact.drug.title(), *rng.sample(MESH_EXTRA, 3)}),
        },
        "long_answer": long_answer,
        "final_decision": decision,
    }


# ------------------------------------------------------------------------------------------ duplicates

_TEXT_FIELDS = {"medqa": "question", "medmcqa": "question", "headqa": "qtext", "pubmedqa": "question"}


def near_edit(rng: random.Random, text: str) -> tuple[str, str]:
    """A small edit that a fuzzy matcher should still call a duplicate; returns (new text, edit kinds)."""
    words = text.split(" ")
    kind = rng.choice(("swap", "insert", "punct"))
    if kind == "swap" and len(words) > 3:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
        new = " ".join(words)
    elif kind == "insert":
        words.insert(rng.randrange(len(words) + 1), rng.choice(INSERT_WORDS))
        new = " ".join(words)
    else:
        kind = "punct"
        new = text[:-1] if text[-1:] in "?:." else text + "?"
        new = new.replace(", ", " ", 1) if rng.random() < 0.5 and ", " in new else new
    if (
        rng.random() < 0.3
    ):  # sometimes also a case change (alone it would be an exact duplicate after normalising)
        kind += "+case"
        new = new[:1].lower() + new[1:] if new[:1].isupper() else new[:1].upper() + new[1:]
    if normalize_text(new) == normalize_text(text):  # e.g. two equal words swapped: insert one instead
        words = text.split(" ")
        words.insert(1, rng.choice(INSERT_WORDS))
        new, kind = " ".join(words), "insert"
    return new, kind


def _new_id(fmt: str, row: dict[str, Any], index: int, chunk_seed: int) -> None:
    if fmt == "medmcqa":
        row["id"] = f"syn-{chunk_seed:x}-{index:08d}"
    elif fmt == "headqa":
        row["qid"] = index + 1
    elif fmt == "pubmedqa":
        row["pubid"] = 10_000_000 + index


def content_key(fmt: str, row: dict[str, Any]) -> int:
    """A 64-bit hash of what makes two rows the same question (question, option set, context)."""
    if fmt == "medqa":
        question, options = row["question"], list(row["options"].values())
    elif fmt == "medmcqa":
        question, options = row["question"], [row[f"op{c}"] for c in "abcd"]
    elif fmt == "headqa":
        question, options = row["qtext"], [a["atext"] for a in row["answers"]]
    else:
        question, options = row["question"] + "\x1e" + "\n".join(row["context"]["contexts"]), []
    text = question + "\x1f" + "\x1f".join(sorted(options))
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def _fresh_row(fmt: str, rng: random.Random, seed: int, index: int) -> dict[str, Any]:
    if fmt == "medqa":
        return medqa_row(rng, 5 if rng.random() < 0.2 else 4)
    if fmt == "medmcqa":
        return medmcqa_row(rng, f"syn-{seed:x}-{index:08d}")
    if fmt == "headqa":
        return headqa_row(rng, index + 1)
    return pubmedqa_row(rng, 10_000_000 + index)


def render_row(
    fmt: str, seed: int, index: int, dup_exact_frac: float, dup_near_frac: float
) -> tuple[dict[str, Any], list[Any] | None]:
    """Row ``index`` of a ``fmt`` pool and, for a designed copy, its record ([row, original] or [row, original,
    edit kinds]; else None). Depends only on (seed, fmt, index, the shares): a copy's original is an earlier
    row drawn from this row's own generator and rendered again here, so any shard renders any row, and copies
    reach across shards (a chain of copies is followed back; its expected length is about 1 + the shares)."""
    rng = random.Random(f"{seed}:{fmt}:{index}")
    r = rng.random()
    if index and r < dup_exact_frac + dup_near_frac:
        original = rng.randrange(index)
        row, _ = render_row(fmt, seed, original, dup_exact_frac, dup_near_frac)
        _new_id(fmt, row, index, seed)
        if r < dup_exact_frac:
            return row, [index, original]
        field = _TEXT_FIELDS[fmt]
        row[field], kind = near_edit(rng, row[field])
        return row, [index, original, kind]
    return _fresh_row(fmt, rng, seed, index), None


Shard = tuple[list[dict[str, Any]], list[list[Any]], list[list[Any]], np.ndarray]


def _build_shard(args: tuple[str, int, int, int, float, float]) -> Shard:
    """Rows [start, start + count) of one format: the rows, their designed copies, their content keys."""
    fmt, seed, start, count, dup_exact_frac, dup_near_frac = args
    rows: list[dict[str, Any]] = []
    exact: list[list[Any]] = []
    near: list[list[Any]] = []
    for index in range(start, start + count):
        row, copy = render_row(fmt, seed, index, dup_exact_frac, dup_near_frac)
        rows.append(row)
        if copy is not None:
            (exact if len(copy) == 2 else near).append(copy)
    keys = np.fromiter((content_key(fmt, row) for row in rows), dtype=np.uint64, count=len(rows))
    return rows, exact, near, keys


# ------------------------------------------------------------------------------------------ writing

# Parquet layouts (MedQA, MedMCQA), fixed so that every shard file of a pool has the same schema.
_PARQUET_SCHEMAS = {
    "medqa": pa.schema(
        [
            ("question", pa.string()),
            ("answer", pa.string()),
            ("options", pa.struct([(label, pa.string()) for label in "ABCDE"])),
            ("meta_info", pa.string()),
            ("answer_idx", pa.string()),
            ("metamap_phrases", pa.list_(pa.string())),
        ]
    ),
    "medmcqa": pa.schema(
        [
            ("id", pa.string()),
            ("question", pa.string()),
            *((f"op{c}", pa.string()) for c in "abcd"),
            ("cop", pa.int64()),
            ("choice_type", pa.string()),
            ("exp", pa.string()),
            ("subject_name", pa.string()),
            ("topic_name", pa.string()),
        ]
    ),
}


def _shards(
    fmt: str, n_rows: int, seed: int, dup_exact_frac: float, dup_near_frac: float
) -> list[tuple[str, int, int, int, float, float]]:
    return [
        (fmt, seed, start, min(SHARD_ROWS, n_rows - start), dup_exact_frac, dup_near_frac)
        for start in range(0, n_rows, SHARD_ROWS)
    ]


def _jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n").encode("utf-8")


def _write_part(path: Path, fmt: str, rows: list[dict[str, Any]], parquet: bool) -> None:
    """One shard's file, written under a hidden temporary name (readers skip dot files) and renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    if parquet:
        pq.write_table(
            pa.Table.from_pylist(rows, schema=_PARQUET_SCHEMAS[fmt]),
            tmp,
            compression="zstd",
            row_group_size=SHARD_ROWS,
        )
    else:
        tmp.write_bytes(_jsonl_bytes(rows))
    os.replace(tmp, path)


def _shard_to_part(
    folder: str, part: int, parquet: bool, spec: tuple[str, int, int, int, float, float]
) -> tuple[int, list[list[Any]], list[list[Any]], np.ndarray]:
    """Ray task: build one shard and write it as ``folder/part-NNNNN.<ext>``; returns all but the rows."""
    rows, exact, near, keys = _build_shard(spec)
    _write_part(Path(folder) / f"part-{part:05d}.{'parquet' if parquet else 'jsonl'}", spec[0], rows, parquet)
    return len(rows), exact, near, keys


def accidental_copies(keys: np.ndarray, designed_exact: list[list[Any]]) -> list[list[int]]:
    """[row, first row with the same content key] for every repeat that is not a designed exact copy."""
    if not len(keys):
        return []
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    first_of = first[inverse.reshape(-1)]
    index = np.arange(len(keys))
    repeat = first_of != index
    if designed_exact:
        repeat[np.array([dup for dup, _ in designed_exact], dtype=np.int64)] = False
    return np.stack([index[repeat], first_of[repeat]], axis=1).tolist()


def _write_file(path: Path, fmt: str, shards: Iterator[Shard], parquet: bool) -> Shard:
    """Write the shards in order into one file; returns (no rows), the copies and every row's key."""
    exact: list[list[Any]] = []
    near: list[list[Any]] = []
    keys: list[np.ndarray] = []
    writer: pq.ParquetWriter | None = None
    with open(path, "wb") if not parquet else nullcontext() as out:
        for rows, ex, ne, k in shards:
            exact.extend(ex)
            near.extend(ne)
            keys.append(k)
            if parquet:
                if writer is None:
                    writer = pq.ParquetWriter(path, _PARQUET_SCHEMAS[fmt], compression="zstd")
                writer.write_table(
                    pa.Table.from_pylist(rows, schema=_PARQUET_SCHEMAS[fmt]), row_group_size=SHARD_ROWS
                )
            else:
                out.write(_jsonl_bytes(rows))
    if writer is not None:
        writer.close()
    return [], exact, near, np.concatenate(keys) if keys else np.zeros(0, np.uint64)


def _submit_parts(
    folder: Path, specs: list[tuple[str, int, int, int, float, float]], parquet: bool
) -> list[Any]:
    """One Ray task per shard, each writing its own part file into ``folder``; returns the task refs."""
    import ray

    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("part-*"):  # a larger pool written here before must not leave parts behind
        stale.unlink()
    task = ray.remote(num_cpus=1, max_retries=2)(_shard_to_part)
    return [task.remote(str(folder), part, parquet, spec) for part, spec in enumerate(specs)]


def _collect_parts(refs: list[Any]) -> Shard:
    """The parts' copies and keys, in shard order (each result is small: no rows)."""
    import ray

    exact: list[list[Any]] = []
    near: list[list[Any]] = []
    keys: list[np.ndarray] = []
    for ref in refs:
        _, ex, ne, k = ray.get(ref)
        exact.extend(ex)
        near.extend(ne)
        keys.append(k)
    return [], exact, near, np.concatenate(keys)


def generate_pool(
    out_dir: str | os.PathLike[str],
    n_rows: int,
    *,
    format: str = "medmcqa",
    seed: int = 0,
    dup_exact_frac: float = 0.02,
    dup_near_frac: float = 0.03,
    parquet: bool = False,
    workers: int = 1,
    ray: bool = False,
) -> dict[str, Any]:
    """Write a synthetic pool of ``n_rows`` rows to ``out_dir``; returns counts and file names.

    ``format``: one source format (medqa, medmcqa, headqa, pubmedqa) or ``mixed`` (the m1 pool's mix).
    Files are ``<format>.jsonl`` (or ``.parquet`` with ``parquet=True``; PubMedQA and HeadQA always JSONL,
    as their nested fields read most naturally there) plus ``duplicates.json``: for each file, the designed
    ``exact`` pairs [row, original row] and ``near`` triples [row, original row, edit kinds], and the
    ``accidental_exact`` pairs [row, first row with the same content] where templates collided by chance;
    rows are 0-based, counted over the whole format.

    ``ray=True``: one Ray task per 50,000-row shard (on the running Ray, or a local one), each writing its own
    ``<format>/part-NNNNN.<ext>`` (the folder is the source path to ingest; its files sorted by name are the
    rows in order); the driver keeps only each row's 8-byte content key. The rows are the same as without
    Ray (``workers`` > 1: processes build the shards, the driver writes one file).
    """
    check_dup_fracs(dup_exact_frac, dup_near_frac)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if format == "mixed":
        total = sum(MIXED_SHARES.values())
        plan = {f: n_rows * share // total for f, share in MIXED_SHARES.items()}
        plan["medmcqa"] += n_rows - sum(plan.values())
    elif format in MIXED_SHARES:
        plan = {format: n_rows}
    else:
        raise ValueError(f"format must be one of {sorted(MIXED_SHARES)} or 'mixed', not {format!r}")
    t0 = time.perf_counter()
    summary: dict[str, Any] = {
        "out_dir": str(out),
        "rows": 0,
        "files": {},
        "exact_duplicates": 0,
        "near_duplicates": 0,
        "accidental_exact_duplicates": 0,
    }
    duplicates: dict[str, Any] = {}
    plan = {fmt: count for fmt, count in plan.items() if count > 0}
    specs_of = {fmt: _shards(fmt, count, seed, dup_exact_frac, dup_near_frac) for fmt, count in plan.items()}
    use_parquet_of = {fmt: parquet and fmt in ("medqa", "medmcqa") for fmt in plan}
    # Every format's shards are submitted before any is collected, so small formats do not idle the cores.
    refs_of = (
        {fmt: _submit_parts(out / fmt, specs_of[fmt], use_parquet_of[fmt]) for fmt in plan} if ray else {}
    )
    for fmt in plan:
        use_parquet = use_parquet_of[fmt]
        specs = specs_of[fmt]
        if ray:
            name = fmt
            _, exact, near, keys = _collect_parts(refs_of[fmt])
        else:
            name = f"{fmt}.{'parquet' if use_parquet else 'jsonl'}"
            if workers > 1 and len(specs) > 1:
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    _, exact, near, keys = _write_file(
                        out / name, fmt, pool.map(_build_shard, specs), use_parquet
                    )
            else:
                _, exact, near, keys = _write_file(out / name, fmt, map(_build_shard, specs), use_parquet)
        accidental = accidental_copies(keys, exact)
        summary["files"][name] = {
            "format": fmt,
            "rows": len(keys),
            "exact_duplicates": len(exact),
            "near_duplicates": len(near),
            "accidental_exact_duplicates": len(accidental),
        }
        if ray:
            summary["files"][name]["parts"] = len(specs)
        summary["rows"] += len(keys)
        summary["exact_duplicates"] += len(exact)
        summary["near_duplicates"] += len(near)
        summary["accidental_exact_duplicates"] += len(accidental)
        duplicates[name] = {"exact": exact, "near": near, "accidental_exact": accidental}
    tmp = out / ".duplicates.json.tmp"
    tmp.write_text(json.dumps(duplicates))
    os.replace(tmp, out / "duplicates.json")
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def fraction(text: str) -> float:
    """argparse type: a share of the rows, a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a share of the rows between 0 and 1, got {text}")
    return value


def check_dup_fracs(dup_exact_frac: float, dup_near_frac: float) -> None:
    """Both shares in [0, 1] and together at most 1 (the rest are fresh rows); ValueError otherwise."""
    for name, value in (("dup_exact_frac", dup_exact_frac), ("dup_near_frac", dup_near_frac)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    if dup_exact_frac + dup_near_frac > 1.0:
        raise ValueError(
            f"--dup-exact-frac {dup_exact_frac:g} + --dup-near-frac {dup_near_frac:g} = "
            f"{dup_exact_frac + dup_near_frac:g}: the duplicate shares must add up to at most 1"
        )


def add_parser(subparsers: Any) -> None:
    """``m1 synth OUT_DIR --rows N --seed S``."""
    from curation.cli import positive_int

    p = subparsers.add_parser("synth", help="write a synthetic pool with known exact and near duplicates")
    p.add_argument("out_dir", type=nonempty_path)
    p.add_argument("--rows", type=positive_int, required=True, help="rows to write (at least 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", default="medmcqa", choices=[*MIXED_SHARES, "mixed"])
    p.add_argument(
        "--dup-exact-frac", type=fraction, default=0.02, help="share of rows that copy an earlier row (0-1)"
    )
    p.add_argument(
        "--dup-near-frac", type=fraction, default=0.03, help="share of rows that edit an earlier row (0-1)"
    )
    p.add_argument(
        "--parquet", action="store_true", help="write MedQA/MedMCQA rows as Parquet instead of JSONL"
    )
    p.add_argument(
        "--workers", type=positive_int, default=1, help="processes building shards (without --ray)"
    )
    p.add_argument(
        "--ray",
        action="store_true",
        help="build the 50,000-row shards as Ray tasks (RAY_ADDRESS, else a local Ray), each writing "
        "OUT_DIR/<format>/part-NNNNN.<ext>; the same rows as without it",
    )
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    from curation.errors import UserError

    try:
        check_dup_fracs(args.dup_exact_frac, args.dup_near_frac)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.ray:
        import ray

        if not ray.is_initialized():
            local_ray_env()  # as the pipeline's local Ray (curation.pipeline)
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    summary = generate_pool(
        args.out_dir,
        args.rows,
        format=args.format,
        seed=args.seed,
        dup_exact_frac=args.dup_exact_frac,
        dup_near_frac=args.dup_near_frac,
        parquet=args.parquet,
        workers=args.workers,
        ray=args.ray,
    )
    print(json.dumps(summary, indent=2))
    return 0


# ------------------------------------------------------------------------------------------ sample pool


def build_sample_pool(out_dir: str | os.PathLike[str], *, seed: int = 2025) -> dict[str, int]:
    """(Re)build ``curation/sample_pool``: a few hundred rows in the four formats, with bad rows and duplicates.

    Returns rows written per file. The bad rows (one or two of each kind) and the exact cross-source
    duplicates are placed at fixed positions so the demo's funnel always shows the same rejects.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    medqa = [medqa_row(rng, 5 if i % 4 == 0 else 4) for i in range(116)]
    medmcqa = [medmcqa_row(rng, f"{rng.getrandbits(128):032x}"[:8] + f"-{i:04d}") for i in range(116)]
    headqa = [headqa_row(rng, i + 1) for i in range(57)]
    pubmedqa = [pubmedqa_row(rng, 21_000_000 + 137 * i) for i in range(39)]

    # MedQA: an empty question, an answer text that disagrees with answer_idx, an exact duplicate with its
    # options in another order (same qid), and (written below) a line with invalid UTF-8.
    medqa.insert(17, dict(medqa[3], question="   "))
    medqa.insert(41, dict(medqa[40], answer="a text that is not among the options"))
    dup = dict(medqa[8])
    items = list(dup["options"].items())
    texts = [t for _, t in items][::-1]
    dup["options"] = dict(zip([k for k, _ in items], texts, strict=True))
    dup["answer_idx"] = next(k for k, t in dup["options"].items() if t == dup["answer"])
    medqa.insert(77, dup)

    # MedMCQA: cop out of range, a single non-empty option, a null question, and two rows that repeat
    # MedQA questions exactly (cross-source duplicates: kept here, for the dedup stage to find).
    medmcqa.insert(9, dict(medmcqa[9], id="bad-cop-0009", cop=7))
    medmcqa.insert(33, dict(medmcqa[33], id="one-option-0033", opb="", opc="", opd=None))
    medmcqa.insert(58, dict(medmcqa[58], id="no-question-0058", question=None))
    for position, source_row in ((90, medqa[1]), (101, medqa[2])):
        labels = sorted(source_row["options"])[:4]
        if source_row["answer_idx"] not in labels:
            labels = [*labels[:3], source_row["answer_idx"]]
        medmcqa.insert(
            position,
            {
                "id": f"crossdup-{position:04d}",
                "question": source_row["question"],
                **{f"op{c}": source_row["options"][label] for c, label in zip("abcd", labels, strict=True)},
                "cop": labels.index(source_row["answer_idx"]),
                "choice_type": "single",
                "exp": None,
                "subject_name": "Medicine",
                "topic_name": None,
            },
        )

    # HEAD-QA: a repeated answer id, answers that are not a list, and a repeat of a MedMCQA question.
    bad_aid = json.loads(json.dumps(headqa[5]))
    bad_aid["answers"][1]["aid"] = bad_aid["answers"][0]["aid"]
    headqa.insert(6, bad_aid)
    headqa.insert(30, dict(headqa[30], answers="1) first 2) second"))
    mm = medmcqa[0]
    headqa.insert(
        45,
        {
            "name": "Cuaderno_2016_1_M",
            "year": "2016",
            "category": "medicine",
            "qid": 245,
            "qtext": mm["question"],
            "ra": mm["cop"] + 1,
            "image": "",
            "answers": [{"aid": i + 1, "atext": mm[f"op{c}"]} for i, c in enumerate("abcd")],
        },
    )

    # PubMedQA: a final_decision that is not yes/no/maybe.
    pubmedqa.insert(12, dict(pubmedqa[12], pubid=21_999_999, final_decision="possibly"))

    lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in medqa]
    broken = json.dumps(medqa[60], ensure_ascii=False).replace("year-old", "year\u2013old").encode("utf-8")
    lines.insert(61, broken.replace("\u2013".encode(), b"\x96"))  # a cp1252 dash inside UTF-8: invalid
    (out / "medqa.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    pq.write_table(pa.Table.from_pylist(medmcqa), out / "medmcqa.parquet", row_group_size=64)
    (out / "headqa.json").write_text(
        json.dumps(headqa, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    (out / "pubmedqa.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pubmedqa))
    return {
        "medqa.jsonl": len(lines),
        "medmcqa.parquet": len(medmcqa),
        "headqa.json": len(headqa),
        "pubmedqa.jsonl": len(pubmedqa),
    }
