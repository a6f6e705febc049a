# Stage 1b: dcm2niix conversion of each chosen series, verified voxel by voxel against pydicom and
# slice by slice against ImagePositionPatient; PET scaled to SUV.


rule convert:
    input:
        inventory="results/ingest/{subject}.json",
    output:
        directory("results/nifti/{subject}"),
    log:
        "logs/convert/{subject}.log",
    benchmark:
        "benchmarks/convert/{subject}.tsv"
    group:
        "subject"
    conda:
        "../../envs/ingest.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        study=study_dir,
        conversion=config["conversion"],
        code=CODE["convert"],
    script:
        "../scripts/convert.py"
