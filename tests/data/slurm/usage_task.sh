#!/bin/bash
# one array task of the usage capture (job 1, see README.md here)
case $SLURM_ARRAY_TASK_ID in
  0) python3 -c 'import time; x=bytearray(30*2**20); t=time.time()
while time.time()-t<2: pass' ;;                                      # 2 s of CPU, 30 MiB: COMPLETED
  1) python3 -c 'import time; x=bytearray(400*2**20); time.sleep(5)' ;;  # 400 MiB over --mem=100M: killed
  2) python3 -c 'import time, sys; t=time.time()
while time.time()-t<1: pass
sys.exit(3)' ;;                                                      # 1 s of CPU, then exit 3: FAILED
  3) sleep 300 ;;                                                    # past --time=1: TIMEOUT
esac
