# Stage 1: find every DICOM series of a subject from its headers, classify it, choose one per
# modality. Never fails for bad input: a subject without usable series gets a failure record.


rule ingest:
    input:
        study=study_dir,
    output:
        "results/ingest/{subject}.json",
    log:
        "logs/ingest/{subject}.log",
    benchmark:
        "benchmarks/ingest/{subject}.tsv"
    conda:
        "../../envs/ingest.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        rules=as_json(config["ingest"]),
        pins=lambda wildcards: as_json(series_pins(wildcards)),
        modalities=MODALITIES,
        code=CODE["ingest"],
    shell:
        '"$CALCIRAD_PYTHON" -m calcirad.steps ingest --subject {wildcards.subject:q}'
        " --study {input.study:q} --rules {params.rules:q} --pins {params.pins:q}"
        " --modalities {params.modalities:q} --out {output:q} --log {log:q}"


rule series_inventory:
    input:
        expand("results/ingest/{subject}.json", subject=SUBJECTS),
    output:
        report(
            "results/tables/series_inventory.csv",
            caption="../report/series_inventory.rst",
            category="Data",
        ),
    log:
        "logs/series_inventory.log",
    benchmark:
        "benchmarks/series_inventory.tsv"
    conda:
        "../../envs/ingest.yaml"
    script:
        "../scripts/series_inventory.py"
