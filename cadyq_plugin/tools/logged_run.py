"""Run a command with its whole output in a log file, handing each complete line to a callback as it appears.

The quickstart keeps every run's full log in its workdir and shows only progress lines taken from it, so a user
sees the runs moving without the noise.
"""
import subprocess
import time


def run_logged(argv, log_path, on_line=None, poll_seconds=0.5, **popen_kwargs):
    """Run ``argv`` with stdout and stderr into ``log_path``; call ``on_line(line)`` for each line written.

    Returns:
        The exit status.
    """
    pending = ''
    with open(log_path, 'w') as log, open(log_path) as follow:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **popen_kwargs)
        while True:
            finished = process.poll() is not None  # read once more after the end: nothing is missed
            pending += follow.read()
            *lines, pending = pending.split('\n')
            for line in lines:
                if on_line is not None:
                    on_line(line)
            if finished:
                break
            time.sleep(poll_seconds)
    if pending and on_line is not None:
        on_line(pending)
    return process.returncode
