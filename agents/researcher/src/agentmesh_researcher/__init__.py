
# rebuild probe
